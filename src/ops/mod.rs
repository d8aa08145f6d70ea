//! Operator commands and the daemon's side of them.
//!
//! Owns the control socket the daemon serves (`control`: one request line,
//! one JSON answer), the `status`/`flush`/`check`/`query` subcommands
//! (`commands`) and the man pages and shell completions (`generate`). It may
//! import `proxy` (to read its counters), `protocol` and `host`; nothing in
//! `proxy`, `protocol` or `host` imports it.

pub mod commands;
pub mod control;
pub mod generate;
