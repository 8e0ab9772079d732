//! Checks of a LUNA Python lambda's sources with a real Python (3.11 grammar) parser:
//! every `.py` file must parse, and `lambda_main.py` must define the entry point its
//! lambda type needs. Pure: sources in, problems out. Depends on `model` only.

use rustpython_parser::{Parse, ast};

use crate::model::LambdaType;

/// Methods a tasks lambda's class must define.
pub const TASK_METHODS: [&str; 2] = ["splitTasksContent", "executeSubtask"];

/// Brackets open at once in a source (CPython refuses more than 200 as well).
const MAX_BRACKET_DEPTH: usize = 200;
/// Operators and operator keywords in one logical line: each can add a level to the
/// syntax tree (`-x`, `a+b+c`, `x**y**z`, `not`, `lambda`), which the parser and the
/// tree's drop walk recursively.
const MAX_OPERATORS_PER_LINE: usize = 2_000;
/// Leading whitespace of a line, in columns: a bound on block nesting.
const MAX_INDENT_COLUMNS: usize = 400;
/// The stack of the thread that parses: with the bounds above the tree is at most a
/// few thousand levels deep, far below what this holds.
const PARSE_STACK_BYTES: usize = 16 * 1024 * 1024;

/// Every problem with the Python sources of an archive (`(path, source)` pairs, which
/// include `lambda_main.py`). Sources nested beyond the parser's safe depth are refused
/// before parsing, and the parse runs on a thread with a stack of its own, so no input
/// can overflow the service's stack.
pub fn problems(sources: &[(String, String)], lambda_type: LambdaType) -> Vec<String> {
    let owned = sources.to_vec();
    let parsed = std::thread::Builder::new()
        .name("python-check".into())
        .stack_size(PARSE_STACK_BYTES)
        .spawn(move || parse_all(&owned, lambda_type))
        .map(|thread| thread.join());
    match parsed {
        Ok(Ok(problems)) => problems,
        Ok(Err(_)) => vec!["the Python sources could not be checked (the parser failed)".into()],
        Err(e) => vec![format!("the Python sources could not be checked: {e}")],
    }
}

fn parse_all(sources: &[(String, String)], lambda_type: LambdaType) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, source) in sources {
        if let Some(problem) = nesting_problem(source) {
            problems.push(format!("'{path}' {problem}"));
            continue;
        }
        match ast::Suite::parse(source, path) {
            Ok(suite) if path == super::archive::PYTHON_ENTRY => {
                problems.extend(entry_point_problem(&suite, lambda_type));
            }
            Ok(_) => {}
            Err(e) => {
                let (line, column) = line_and_column(source, e.offset.to_usize());
                problems.push(format!(
                    "'{path}' is not valid Python: {} at line {line}, column {column}",
                    e.error
                ));
            }
        }
    }
    problems
}

/// Why `source` nests deeper than the checker parses safely, if it does. Strings and
/// comments are skipped; the scan is linear.
fn nesting_problem(source: &str) -> Option<String> {
    let bytes = source.as_bytes();
    let (mut depth, mut operators, mut line, mut at_line_start) = (0usize, 0usize, 1usize, true);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if at_line_start {
            let indent = bytes[i..]
                .iter()
                .take_while(|c| matches!(c, b' ' | b'\t'))
                .count();
            if indent > MAX_INDENT_COLUMNS {
                return Some(format!(
                    "is indented more than {MAX_INDENT_COLUMNS} columns at line {line}"
                ));
            }
            at_line_start = false;
        }
        match b {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\'' | b'"' => {
                let triple = bytes[i..].starts_with(&[b; 3]);
                let quote: &[u8] = if triple {
                    &bytes[i..i + 3]
                } else {
                    &bytes[i..=i]
                };
                i += quote.len();
                while i < bytes.len() && !bytes[i..].starts_with(quote) {
                    if bytes[i] == b'\\' {
                        i += 1;
                    } else if bytes[i] == b'\n' {
                        line += 1;
                        if !triple {
                            break;
                        }
                    }
                    i += 1;
                }
                i += quote.len();
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_BRACKET_DEPTH {
                    return Some(format!(
                        "nests more than {MAX_BRACKET_DEPTH} brackets at line {line}"
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => {
                line += 1;
                // A logical line ends outside brackets.
                if depth == 0 {
                    operators = 0;
                    at_line_start = true;
                }
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'@' | b'&' | b'|' | b'^' | b'~' | b'<' | b'>'
            | b'=' | b'!' => operators += 1,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let word_len = bytes[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                    .count();
                let word = &bytes[i..i + word_len];
                if matches!(
                    word,
                    b"not"
                        | b"and"
                        | b"or"
                        | b"if"
                        | b"else"
                        | b"lambda"
                        | b"await"
                        | b"in"
                        | b"is"
                ) {
                    operators += 1;
                }
                i += word_len;
                continue;
            }
            _ => {}
        }
        if operators > MAX_OPERATORS_PER_LINE {
            return Some(format!(
                "has more than {MAX_OPERATORS_PER_LINE} operators in the statement at line {line}"
            ));
        }
        i += 1;
    }
    None
}

fn entry_point_problem(suite: &[ast::Stmt], lambda_type: LambdaType) -> Option<String> {
    let top_level = flatten_blocks(suite);
    if lambda_type == LambdaType::Tasks {
        let has_task_class = top_level.iter().any(|stmt| match stmt {
            ast::Stmt::ClassDef(class) => {
                let methods: Vec<&str> = flatten_blocks(&class.body)
                    .iter()
                    .filter_map(|s| defined_function(s))
                    .collect();
                TASK_METHODS.iter().all(|m| methods.contains(m))
            }
            _ => false,
        });
        return (!has_task_class).then(|| {
            "'lambda_main.py' must define a class with the methods splitTasksContent and executeSubtask (lambda_type tasks)".to_owned()
        });
    }
    let binds_main = top_level.iter().any(|stmt| binds_name(stmt, "main"));
    (!binds_main).then(|| {
        format!(
            "'lambda_main.py' must define 'main' (def main(request) or async def main(request)) for lambda_type {}",
            lambda_type.as_str()
        )
    })
}

/// Statements of a block, with the bodies of module-level `if`/`try`/`with` inlined
/// (definitions guarded by them still bind at import time).
fn flatten_blocks(body: &[ast::Stmt]) -> Vec<&ast::Stmt> {
    let mut out = Vec::new();
    for stmt in body {
        match stmt {
            ast::Stmt::If(s) => {
                out.extend(flatten_blocks(&s.body));
                out.extend(flatten_blocks(&s.orelse));
            }
            ast::Stmt::Try(s) => {
                out.extend(flatten_blocks(&s.body));
                out.extend(flatten_blocks(&s.orelse));
                out.extend(flatten_blocks(&s.finalbody));
            }
            ast::Stmt::With(s) => out.extend(flatten_blocks(&s.body)),
            other => out.push(other),
        }
    }
    out
}

fn defined_function(stmt: &ast::Stmt) -> Option<&str> {
    match stmt {
        ast::Stmt::FunctionDef(f) => Some(f.name.as_str()),
        ast::Stmt::AsyncFunctionDef(f) => Some(f.name.as_str()),
        _ => None,
    }
}

fn binds_name(stmt: &ast::Stmt, name: &str) -> bool {
    let is_name = |e: &ast::Expr| matches!(e, ast::Expr::Name(n) if n.id.as_str() == name);
    match stmt {
        ast::Stmt::Assign(a) => a.targets.iter().any(is_name),
        ast::Stmt::AnnAssign(a) => is_name(&a.target),
        ast::Stmt::Import(i) => i.names.iter().any(|alias| alias_binds(alias, name)),
        ast::Stmt::ImportFrom(i) => i.names.iter().any(|alias| alias_binds(alias, name)),
        other => defined_function(other) == Some(name),
    }
}

fn alias_binds(alias: &ast::Alias, name: &str) -> bool {
    alias
        .asname
        .as_ref()
        .map_or(alias.name.as_str(), |a| a.as_str())
        == name
}

/// 1-based line and column of a byte offset.
fn line_and_column(source: &str, offset: usize) -> (usize, usize) {
    let before = source.get(..offset.min(source.len())).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(source: &str, lambda_type: LambdaType) -> Vec<String> {
        problems(&[("lambda_main.py".into(), source.into())], lambda_type)
    }

    #[test]
    fn standalone_needs_main() {
        assert!(
            check(
                "async def main(request):\n    return {}\n",
                LambdaType::Standalone
            )
            .is_empty()
        );
        assert!(check("def main(request):\n    return 'x'\n", LambdaType::Handlers).is_empty());
        assert!(check("from impl import handle as main\n", LambdaType::Standalone).is_empty());
        assert!(check("main = lambda r: {}\n", LambdaType::Standalone).is_empty());
        assert!(check("try:\n    import x\nexcept ImportError:\n    pass\nelse:\n    pass\nif True:\n    def main(r): ...\n", LambdaType::Standalone).is_empty());
        let p = check("def other(request):\n    pass\n", LambdaType::Standalone);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("must define 'main'"), "{p:?}");
        // A nested main does not count.
        assert_eq!(
            check(
                "class A:\n    def main(self): ...\n",
                LambdaType::Standalone
            )
            .len(),
            1
        );
    }

    #[test]
    fn tasks_need_both_methods() {
        let ok = "class T:\n    async def splitTasksContent(self, c):\n        return []\n    def executeSubtask(self, s):\n        return {}\n";
        assert!(check(ok, LambdaType::Tasks).is_empty());
        let half = "class T:\n    async def splitTasksContent(self, c):\n        return []\n";
        assert_eq!(check(half, LambdaType::Tasks).len(), 1);
        assert_eq!(check("def main(r): ...\n", LambdaType::Tasks).len(), 1);
    }

    /// Inputs that overflowed the parser's stack (a crash of the whole service) are
    /// refused by name; ordinary nesting still parses.
    #[test]
    fn nesting_past_the_parsers_depth_is_refused_not_a_crash() {
        for (what, source) in [
            ("unary", format!("x = {}1\n", "-".repeat(200_000))),
            ("power", format!("x = 1{}\n", "**1".repeat(200_000))),
            ("sum", format!("x = 1{}\n", "+1".repeat(200_000))),
            ("not", format!("x = {}1\n", "not ".repeat(200_000))),
            (
                "lists",
                format!("x = {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
            ),
            (
                "continued",
                format!("x = (1\n{})\n", "+ 1\n".repeat(100_000)),
            ),
        ] {
            let found = check(
                &format!("{source}def main(r):\n    return {{}}\n"),
                LambdaType::Standalone,
            );
            assert_eq!(found.len(), 1, "{what}: {found:?}");
            assert!(found[0].contains("more than"), "{what}: {found:?}");
        }
        let ordinary = format!(
            "x = {}1{}\ny = '((((' + \"-\" * 3 # (((\ndef main(r):\n    return {{}}\n",
            "(".repeat(50),
            ")".repeat(50)
        );
        assert!(check(&ordinary, LambdaType::Standalone).is_empty());
    }

    #[test]
    fn syntax_errors_name_file_line_and_column() {
        let p = problems(
            &[
                (
                    "lambda_main.py".into(),
                    "def main(r):\n    return {}\n".into(),
                ),
                ("helpers/util.py".into(), "x = 1\ndef broken(:\n".into()),
            ],
            LambdaType::Standalone,
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("'helpers/util.py' is not valid Python"),
            "{p:?}"
        );
        assert!(p[0].contains("line 2"), "{p:?}");
        // Python 3.10+ syntax parses.
        assert!(
            check(
                "def main(r):\n    match r:\n        case _:\n            return {}\n",
                LambdaType::Standalone
            )
            .is_empty()
        );
    }
}
