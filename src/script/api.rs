//! The functions a pack's scripts may call, registered on the Rhai engine. Each one
//! forwards to the running [`ScriptHost`](super::ScriptHost) (see `with_host`).

use rhai::{Array, Dynamic, Engine, EvalAltResult};
use serde_json::Value;

use super::{host_result, state_op, stop, to_json, ttl, with_host, StateApi, StateOp, Stop};

pub(super) fn register(engine: &mut Engine) {
    engine.register_type_with_name::<StateApi>("State");

    engine.register_fn(
        "emit",
        |target: &str, event: &str, data: Dynamic| -> Result<(), Box<EvalAltResult>> {
            let data = to_json(&data)?;
            host_result(with_host(|h| h.emit(target, event, data)))
        },
    );
    engine.register_fn(
        "reply",
        |value: Dynamic| -> Result<(), Box<EvalAltResult>> {
            let value = to_json(&value)?;
            with_host(|h| h.reply(value))
        },
    );
    engine.register_fn("join", |room: &str| -> Result<(), Box<EvalAltResult>> {
        host_result(with_host(|h| h.join(room)))
    });
    engine.register_fn("leave", |room: &str| -> Result<(), Box<EvalAltResult>> {
        host_result(with_host(|h| h.leave(room)))
    });
    engine.register_fn(
        "presence",
        |room: &str| -> Result<Array, Box<EvalAltResult>> {
            let members = host_result(with_host(|h| h.presence(room)))?;
            Ok(members.into_iter().map(Dynamic::from).collect())
        },
    );
    engine.register_fn("drop", || -> Result<(), Box<EvalAltResult>> {
        with_host(|h| h.drop_delivery())
    });
    engine.register_fn(
        "reject",
        |code: &str, message: &str| -> Result<(), Box<EvalAltResult>> {
            if code.is_empty()
                || !code
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(format!(
                    "reject: code `{code}` must be lowercase letters, digits and `_`"
                )
                .into());
            }
            Err(stop(Stop::Reject {
                code: code.to_string(),
                message: message.to_string(),
            }))
        },
    );

    engine.register_fn("get", |_: StateApi, k: &str| {
        state_op(StateOp::Get(k.into()))
    });
    engine.register_fn("set", |_: StateApi, k: &str, v: Dynamic| {
        state_op(StateOp::Set(k.into(), to_json(&v)?, None))
    });
    engine.register_fn("set", |_: StateApi, k: &str, v: Dynamic, ttl_s: i64| {
        state_op(StateOp::Set(k.into(), to_json(&v)?, Some(ttl(ttl_s)?)))
    });
    engine.register_fn("del", |_: StateApi, k: &str| {
        state_op(StateOp::Del(k.into()))
    });
    engine.register_fn("incr", |_: StateApi, k: &str, by: i64| {
        state_op(StateOp::Incr(k.into(), Value::from(by)))
    });
    engine.register_fn("incr", |_: StateApi, k: &str, by: f64| {
        state_op(StateOp::Incr(k.into(), Value::from(by)))
    });
    engine.register_fn("hget", |_: StateApi, k: &str, f: &str| {
        state_op(StateOp::HGet(k.into(), f.into()))
    });
    engine.register_fn("hset", |_: StateApi, k: &str, f: &str, v: Dynamic| {
        state_op(StateOp::HSet(k.into(), f.into(), to_json(&v)?))
    });
    engine.register_fn("hdel", |_: StateApi, k: &str, f: &str| {
        state_op(StateOp::HDel(k.into(), f.into()))
    });
    engine.register_fn("hgetall", |_: StateApi, k: &str| {
        state_op(StateOp::HGetAll(k.into()))
    });
    engine.register_fn("sadd", |_: StateApi, k: &str, m: Dynamic| {
        state_op(StateOp::SAdd(k.into(), to_json(&m)?))
    });
    engine.register_fn("srem", |_: StateApi, k: &str, m: Dynamic| {
        state_op(StateOp::SRem(k.into(), to_json(&m)?))
    });
    engine.register_fn("smembers", |_: StateApi, k: &str| {
        state_op(StateOp::SMembers(k.into()))
    });
    engine.register_fn("scard", |_: StateApi, k: &str| {
        state_op(StateOp::SCard(k.into()))
    });
    engine.register_fn("lpush", |_: StateApi, k: &str, v: Dynamic| {
        state_op(StateOp::LPush(k.into(), to_json(&v)?))
    });
    engine.register_fn("rpush", |_: StateApi, k: &str, v: Dynamic| {
        state_op(StateOp::RPush(k.into(), to_json(&v)?))
    });
    engine.register_fn("lrange", |_: StateApi, k: &str, start: i64, stop: i64| {
        state_op(StateOp::LRange(k.into(), start, stop))
    });
    engine.register_fn("ltrim", |_: StateApi, k: &str, start: i64, stop: i64| {
        state_op(StateOp::LTrim(k.into(), start, stop))
    });
}
