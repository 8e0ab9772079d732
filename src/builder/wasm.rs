//! The one WASM build path: the binary's header (component vs core module), compilation
//! into the artifact cache, every import the host cannot satisfy (named), the export the
//! lambda type needs, and the link whose result the runtime serves.
//! Depends on `runtime` (engine, provided interfaces) and `model`.

use wasmtime::component::types::ComponentItem;

use crate::model::LambdaType;
use crate::runtime::{
    Compiled, Prelinked, RuntimeError, WasmEngine, export_problems, import_provided,
};

const MAGIC: &[u8; 4] = b"\0asm";
/// Binary header word of a core module (version 1, layer 0).
const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];

/// Checks the bytes' header before spending a compile on them.
pub fn header_problem(wasm: &[u8]) -> Option<String> {
    if wasm.len() < 8 || &wasm[..4] != MAGIC {
        return Some("lambda.wasm is not a WebAssembly binary".to_owned());
    }
    if wasm[4..8] == CORE_MODULE_VERSION {
        return Some(
            "lambda.wasm is a core WebAssembly module, not a component: build for the \
             wasm32-wasip2 target (or wrap it with `wasm-tools component new`)"
                .to_owned(),
        );
    }
    // Layer 1 is the component model; anything else is a future binary format.
    if wasm[6..8] != [1, 0] {
        return Some("lambda.wasm uses an unsupported WebAssembly binary format".to_owned());
    }
    None
}

/// The outcome of [`check_component`].
pub struct ComponentCheck {
    /// The compiled component, when it compiled (even if other checks failed: its
    /// cache files must still be accounted for).
    pub compiled: Option<Compiled>,
    /// The compiled component linked against the host, when every check passed: the
    /// runtime serves it as it is.
    pub prelinked: Option<Prelinked>,
    /// Every problem; empty when the component can serve.
    pub problems: Vec<String>,
}

/// Compiles the component (or loads it from the compilation cache), checks it against
/// the host and the world `lambda_type` needs, and links it. Its header was checked
/// with the upload (`check_upload`). Blocking: call from `spawn_blocking`. Returns every
/// problem.
pub fn check_component(
    engine: &WasmEngine,
    wasm: &[u8],
    lambda_type: LambdaType,
) -> ComponentCheck {
    let compiled = match engine.compile(wasm) {
        Ok(c) => c,
        Err(e) => {
            let problem = match &e {
                RuntimeError::CompileWorker(limit) if limit.is_limit() => {
                    format!("lambda.wasm cannot be compiled within the service's limits: {e}")
                }
                RuntimeError::CompileWorker(_) => format!("lambda.wasm could not be compiled: {e}"),
                _ => format!("lambda.wasm is not a valid component: {e}"),
            };
            return ComponentCheck {
                compiled: None,
                prelinked: None,
                problems: vec![problem],
            };
        }
    };
    let ty = compiled.component.component_type();
    let mut problems = Vec::new();
    for (name, item) in ty.imports(engine.engine()) {
        let provided = match item.ty {
            ComponentItem::ComponentInstance(_) => import_provided(name),
            _ => false,
        };
        if !provided {
            problems.push(format!(
                "lambda.wasm imports '{name}', which the host does not provide"
            ));
        }
    }
    problems.extend(export_problems(
        engine.engine(),
        &compiled.component,
        lambda_type,
    ));
    let mut prelinked = None;
    if problems.is_empty() {
        match engine.prelink(&compiled.component) {
            Ok(linked) => prelinked = Some(linked),
            Err(e) => problems.push(format!("lambda.wasm cannot be linked: {e}")),
        }
    }
    ComponentCheck {
        compiled: Some(compiled),
        prelinked,
        problems,
    }
}

impl std::fmt::Debug for ComponentCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentCheck")
            .field("compiled", &self.compiled)
            .field("prelinked", &self.prelinked.is_some())
            .field("problems", &self.problems)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert!(header_problem(b"PK\x03\x04....").is_some());
        assert!(header_problem(b"\0asm\x01\0\0\0").unwrap().contains("core"));
        assert!(header_problem(b"\0asm\x0d\0\x01\0").is_none());
        assert!(header_problem(b"\0asm").is_some());
    }
}
