//! Operator commands and the daemon's side of them.
//!
//! Owns the control socket the daemon serves (`control`: one request line,
//! one JSON answer), one module per subcommand (`status`, `flush`,
//! `check`, `query`, `intercept`, `top`, sharing `client`), one per status format (`text`,
//! `prometheus`; JSON is the control socket's own) and the man pages and shell completions (`generate`). It may
//! import `proxy` (to read its counters), `protocol` and `host`; nothing in
//! `proxy`, `protocol` or `host` imports it.

pub mod check;
mod client;
pub mod control;
pub mod flush;
pub mod generate;
pub mod intercept;
pub mod prometheus;
pub mod query;
pub mod status;
pub mod text;
pub mod top;
