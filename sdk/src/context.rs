//! Who is running (`luna:lambda/context`): the lambda, its version, owner and type, and
//! the request being served. Cheap; never fails.

use crate::bindings::luna::lambda::context;

/// The lambda's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LambdaType {
    /// One HTTP handler serving every path.
    Standalone,
    /// An HTTP handler serving the LUNA handlers request shape.
    Handlers,
    /// A tasks lambda.
    Tasks,
}

/// The lambda's id.
pub fn lambda_id() -> String {
    context::lambda_id()
}

/// The version running; it grows on every recreate or update.
pub fn version() -> u32 {
    context::version()
}

/// The account owning the lambda.
pub fn account_id() -> String {
    context::account_id()
}

/// The `Luna-Request-Id` of the request being served.
pub fn request_id() -> String {
    context::request_id()
}

/// The lambda's type.
pub fn lambda_type() -> LambdaType {
    match context::lambda_type() {
        context::Kind::Standalone => LambdaType::Standalone,
        context::Kind::Handlers => LambdaType::Handlers,
        context::Kind::Tasks => LambdaType::Tasks,
    }
}
