//! The script runtime: Rhai with the pack API registered ([`api`]), its limits, and the
//! bridge from script calls to whatever runs them ([`ScriptHost`]).
//!
//! No tokio, no backend, no events: `wss-engine check` compiles scripts with the very
//! same engine the server runs them on, so an unknown function or variable is reported
//! before deployment; the engine supplies the host that gives the calls their meaning.
//!
//! Rhai native functions receive no per-run user data, and a script runs synchronously on
//! one blocking thread from start to end. The running host therefore lives in a
//! thread-local for exactly the duration of [`ScriptRuntime::run`].

use std::cell::RefCell;
use std::collections::HashSet;
use std::time::{Duration, Instant};

mod api;

use rhai::{Dynamic, Engine, EvalAltResult, Position, Scope, AST};
use serde_json::Value;

/// Safe defaults an operator may tighten or loosen from the command line.
#[derive(Debug, Clone)]
pub struct ScriptLimits {
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_expr_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    pub timeout: Duration,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        Self {
            max_operations: 100_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_size: 256 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            timeout: Duration::from_millis(250),
        }
    }
}

/// A state operation, in Redis argument order.
#[derive(Debug, Clone, PartialEq)]
pub enum StateOp {
    Get(String),
    Set(String, Value, Option<Duration>),
    Del(String),
    Incr(String, Value),
    HGet(String, String),
    HSet(String, String, Value),
    HDel(String, String),
    HGetAll(String),
    SAdd(String, Value),
    SRem(String, Value),
    SMembers(String),
    SCard(String),
    LPush(String, Value),
    RPush(String, Value),
    LRange(String, i64, i64),
    LTrim(String, i64, i64),
}

/// Why a host call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostError {
    /// Shared state is out of reach: the run ends and the client gets `unavailable`.
    #[error("{0}")]
    Unavailable(String),
    /// The script used the API wrongly (a bad target, a name too long, a value of the
    /// wrong type): an error the script may catch; uncaught, the client gets
    /// `script_error` with this message.
    #[error("{0}")]
    Invalid(String),
}

/// What a running script talks to.
pub trait ScriptHost {
    fn emit(&mut self, target: &str, event: &str, data: Value) -> Result<(), HostError>;
    fn reply(&mut self, value: Value);
    fn join(&mut self, room: &str) -> Result<(), HostError>;
    fn leave(&mut self, room: &str) -> Result<(), HostError>;
    fn presence(&mut self, room: &str) -> Result<Vec<String>, HostError>;
    fn drop_delivery(&mut self);
    fn state(&mut self, op: StateOp) -> Result<Value, HostError>;
    fn log(&mut self, level: LogLevel, message: &str);
}

#[derive(Debug, Clone, Copy)]
pub enum LogLevel {
    Print,
    Debug,
}

/// How a script run ended when it did not end well.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptFailure {
    /// `reject(code, message)`: the client gets exactly this code.
    Rejected { code: String, message: String },
    /// `throw`, a runtime error or a limit: the client gets `script_error`.
    Error(String),
    /// The host could not reach shared state: the client gets `unavailable`.
    Unavailable(String),
}

/// What a script's scope holds besides `data`.
pub struct ScriptInput<'a> {
    pub event: &'a str,
    pub conn: Value,
    pub data: Value,
}

/// A compile problem, positioned inside the script text (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct CompileError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

thread_local! {
    static HOST: RefCell<Option<HostSlot>> = const { RefCell::new(None) };
}

struct HostSlot {
    host: *mut dyn ScriptHost,
    deadline: Instant,
}

/// How a run ends early on purpose. Carried through Rhai as the value of a runtime
/// error, so [`classify`] recognises it by type, whatever message a script composes.
#[derive(Debug, Clone)]
enum Stop {
    /// `reject(code, message)`.
    Reject { code: String, message: String },
    /// The host lost shared state ([`HostError::Unavailable`]).
    Unavailable(String),
}

fn stop(signal: Stop) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(Dynamic::from(signal), Position::NONE).into()
}

fn with_host<R>(f: impl FnOnce(&mut dyn ScriptHost) -> R) -> Result<R, Box<EvalAltResult>> {
    HOST.with(|slot| {
        let slot = slot.borrow();
        match slot.as_ref() {
            // SAFETY: the pointer is set by `run` from a `&mut` that outlives the script
            // run and is cleared before `run` returns; the script is single-threaded and
            // host calls do not re-enter one another.
            Some(s) => Ok(f(unsafe { &mut *s.host })),
            None => Err("this function is only available while an event is handled".into()),
        }
    })
}

fn host_result<T>(
    r: Result<Result<T, HostError>, Box<EvalAltResult>>,
) -> Result<T, Box<EvalAltResult>> {
    match r? {
        Ok(v) => Ok(v),
        Err(HostError::Unavailable(message)) => Err(stop(Stop::Unavailable(message))),
        Err(HostError::Invalid(message)) => Err(message.into()),
    }
}

fn to_json(value: &Dynamic) -> Result<Value, Box<EvalAltResult>> {
    rhai::serde::from_dynamic::<Value>(value)
        .map_err(|e| format!("value cannot be stored as JSON: {e}").into())
}

fn to_dynamic(value: &Value) -> Result<Dynamic, Box<EvalAltResult>> {
    rhai::serde::to_dynamic(value)
}

/// `state` in a script's scope: a handle whose methods call the host.
#[derive(Debug, Clone, Copy)]
pub struct StateApi;

fn state_op(op: StateOp) -> Result<Dynamic, Box<EvalAltResult>> {
    let value = host_result(with_host(|h| h.state(op)))?;
    to_dynamic(&value)
}

fn ttl(seconds: i64) -> Result<Duration, Box<EvalAltResult>> {
    if seconds <= 0 {
        return Err(format!("ttl must be a positive number of seconds, got {seconds}").into());
    }
    Ok(Duration::from_secs(seconds as u64))
}

pub struct ScriptRuntime {
    engine: Engine,
    /// Every function a script may call, for the compile-time unknown-function check.
    known_functions: HashSet<String>,
    timeout: Duration,
}

impl ScriptRuntime {
    pub fn new(limits: &ScriptLimits) -> Self {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_strict_variables(true);
        engine.disable_symbol("eval");
        // The wall-clock budget: checking the clock on every operation would cost more
        // than most scripts, so look every 256 operations.
        engine.on_progress(|ops| {
            if ops % 256 != 0 {
                return None;
            }
            let expired = HOST.with(|slot| {
                slot.borrow()
                    .as_ref()
                    .is_some_and(|s| Instant::now() >= s.deadline)
            });
            expired.then(|| Dynamic::from("script exceeded its time budget"))
        });
        engine.on_print(|text| {
            let _ = with_host(|h| h.log(LogLevel::Print, text));
        });
        engine.on_debug(|text, _, _| {
            let _ = with_host(|h| h.log(LogLevel::Debug, text));
        });
        api::register(&mut engine);

        let mut known_functions: HashSet<String> = engine
            .gen_fn_signatures(true)
            .iter()
            .filter_map(|sig| sig.split('(').next())
            .map(|name| {
                name.trim_start_matches("get$")
                    .trim_start_matches("set$")
                    .to_string()
            })
            .collect();
        // Language built-ins that are not registered functions.
        for name in [
            "print",
            "debug",
            "type_of",
            "Fn",
            "call",
            "curry",
            "is_def_var",
            "is_def_fn",
            "is_shared",
            "throw",
        ] {
            known_functions.insert(name.to_string());
        }
        Self {
            engine,
            known_functions,
            timeout: limits.timeout,
        }
    }

    fn scope_template() -> Scope<'static> {
        let mut scope = Scope::new();
        // Plain variables, not constants: Rhai's optimizer would otherwise fold the
        // placeholder values into the compiled script. At run time they are constants.
        scope.push("data", Dynamic::UNIT);
        scope.push("conn", Dynamic::UNIT);
        scope.push("event", Dynamic::UNIT);
        scope.push("state", StateApi);
        scope
    }

    /// Compile a script and check every plain function call names a function that exists.
    pub fn compile(&self, source: &str) -> Result<AST, Vec<CompileError>> {
        let scope = Self::scope_template();
        let ast = self
            .engine
            .compile_with_scope(&scope, source)
            .map_err(|e| {
                let pos = e.position();
                vec![CompileError {
                    line: pos.line().unwrap_or(1),
                    col: pos.position().unwrap_or(1),
                    message: e.err_type().to_string(),
                }]
            })?;
        let script_fns: HashSet<String> =
            ast.iter_functions().map(|f| f.name.to_string()).collect();
        let mut errors = Vec::new();
        ast.walk(&mut |path| {
            // Calls appear as expressions (`let x = f()`), statements (`f();`) and
            // method calls (`state.get(k)`); all three must name a known function.
            let call = match path.last() {
                Some(rhai::ASTNode::Expr(rhai::Expr::FnCall(call, pos)))
                | Some(rhai::ASTNode::Expr(rhai::Expr::MethodCall(call, pos)))
                | Some(rhai::ASTNode::Stmt(rhai::Stmt::FnCall(call, pos))) => Some((call, pos)),
                _ => None,
            };
            if let Some((call, pos)) = call {
                let name = call.name.as_str();
                if call.op_token.is_none()
                    && !self.known_functions.contains(name)
                    && !script_fns.contains(name)
                {
                    let hint = crate::suggest::suggest(
                        name,
                        self.known_functions
                            .iter()
                            .chain(script_fns.iter())
                            .map(String::as_str),
                    )
                    .map(|s| format!(", did you mean `{s}`?"))
                    .unwrap_or_default();
                    errors.push(CompileError {
                        line: pos.line().unwrap_or(1),
                        col: pos.position().unwrap_or(1),
                        message: format!("unknown function `{name}`{hint}"),
                    });
                }
            }
            true
        });
        if errors.is_empty() {
            Ok(ast)
        } else {
            Err(errors)
        }
    }

    /// Run a script to the end against `host`. Returns `data` as the script left it.
    pub fn run(
        &self,
        ast: &AST,
        input: ScriptInput<'_>,
        host: &mut dyn ScriptHost,
    ) -> Result<Value, ScriptFailure> {
        struct Clear;
        impl Drop for Clear {
            fn drop(&mut self) {
                HOST.with(|slot| slot.borrow_mut().take());
            }
        }
        let to_failure = |e: Box<EvalAltResult>| ScriptFailure::Error(e.to_string());
        let mut scope = Scope::new();
        scope.push("data", to_dynamic(&input.data).map_err(to_failure)?);
        scope.push_constant("conn", to_dynamic(&input.conn).map_err(to_failure)?);
        scope.push_constant("event", Dynamic::from(input.event.to_string()));
        scope.push_constant("state", StateApi);

        // SAFETY (lifetime erasure): the slot is cleared by `Clear` before `host`'s borrow
        // ends, on every path out of this function including unwinding.
        let host_ptr: *mut (dyn ScriptHost + '_) = host;
        let host_ptr: *mut (dyn ScriptHost + 'static) = unsafe { std::mem::transmute(host_ptr) };
        HOST.with(|slot| {
            *slot.borrow_mut() = Some(HostSlot {
                host: host_ptr,
                deadline: Instant::now() + self.timeout,
            })
        });
        let _clear = Clear;

        match self.engine.run_ast_with_scope(&mut scope, ast) {
            Ok(()) => {}
            Err(e) => return Err(classify(*e)),
        }
        let data = scope.get("data").cloned().unwrap_or(Dynamic::UNIT);
        to_json(&data).map_err(to_failure)
    }
}

fn classify(error: EvalAltResult) -> ScriptFailure {
    match error {
        EvalAltResult::ErrorRuntime(value, _) if value.is::<Stop>() => match value.cast::<Stop>() {
            Stop::Reject { code, message } => ScriptFailure::Rejected { code, message },
            Stop::Unavailable(message) => ScriptFailure::Unavailable(message),
        },
        EvalAltResult::ErrorRuntime(value, _) => ScriptFailure::Error(value.to_string()),
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => classify(*inner),
        EvalAltResult::ErrorTerminated(reason, _) => ScriptFailure::Error(reason.to_string()),
        other => ScriptFailure::Error(other.to_string()),
    }
}
