//! Levelled lines in the lambda's logs (`wasi:logging`), each stamped by the host with
//! the request id. Read them with `GET /1/lambdas/{id}/logs`. (`println!` lands there
//! too, without a level.)

use crate::bindings::wasi::logging::logging::{self, Level};

fn emit(level: Level, message: &str) {
    logging::log(level, "", message);
}

/// A `TRACE` line.
pub fn trace(message: impl AsRef<str>) {
    emit(Level::Trace, message.as_ref());
}

/// A `DEBUG` line.
pub fn debug(message: impl AsRef<str>) {
    emit(Level::Debug, message.as_ref());
}

/// An `INFO` line.
pub fn info(message: impl AsRef<str>) {
    emit(Level::Info, message.as_ref());
}

/// A `WARN` line.
pub fn warn(message: impl AsRef<str>) {
    emit(Level::Warn, message.as_ref());
}

/// An `ERROR` line.
pub fn error(message: impl AsRef<str>) {
    emit(Level::Error, message.as_ref());
}

/// A `CRITICAL` line.
pub fn critical(message: impl AsRef<str>) {
    emit(Level::Critical, message.as_ref());
}
