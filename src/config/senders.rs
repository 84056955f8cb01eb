//! `senders:`: who may send an event (clients over `/ws`, backends over the HTTP API,
//! or both), decoded with the rest of an event.

use std::path::Path;

use super::diagnostic::Diagnostics;
use super::yaml::{Node, NodeKind};
use super::{Sender, Senders};
use crate::suggest::suggest;

/// `senders: [clients, api]`: who may send the event (default: clients only).
pub(super) fn senders(diags: &mut Diagnostics, file: &Path, def: &Node) -> Senders {
    let Some(node) = def.get("senders") else {
        return Senders::default();
    };
    let names = Sender::ALL.map(Sender::as_str);
    let NodeKind::Seq(items) = &node.kind else {
        diags.error(
            file,
            node.pos,
            format!(
                "`senders` must be a list: `[clients]`, `[api]` or `[clients, api]`, not {}",
                node.type_name()
            ),
        );
        return Senders::default();
    };
    let mut senders = Senders {
        clients: false,
        api: false,
    };
    for item in items {
        let sender = match item.as_str() {
            Some("clients") => Sender::Clients,
            Some("api") => Sender::Api,
            other => {
                let hint = other
                    .and_then(|s| suggest(s, names))
                    .map(|s| format!(", did you mean `{s}`?"))
                    .unwrap_or_else(|| " (use `clients` or `api`)".into());
                let shown =
                    other.map_or_else(|| item.type_name().to_string(), |s| format!("`{s}`"));
                diags.error(
                    file,
                    item.pos,
                    format!("unknown sender {shown} in `senders`{hint}"),
                );
                continue;
            }
        };
        if senders.allows(sender) {
            diags.warning(
                file,
                item.pos,
                format!("`{}` is listed twice in `senders`", sender.as_str()),
            );
        }
        match sender {
            Sender::Clients => senders.clients = true,
            Sender::Api => senders.api = true,
        }
    }
    if items.is_empty() {
        diags.error(
            file,
            node.pos,
            "`senders` is empty, so nobody may send this event: list `clients`, `api` or both",
        );
    }
    if !senders.clients && !senders.api {
        return Senders::default();
    }
    senders
}
