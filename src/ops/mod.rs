//! Operator commands: what `rpcbind-proxy status`, `flush`, `check`,
//! `query`, `intercept`, `top` and `generate` do.
//!
//! One module per subcommand (`status`, `flush`, `check`, `query`,
//! `intercept`, `top`), sharing `client` (one request to the daemon's
//! control socket, the status read into its type), the text status format
//! (`text`; JSON is the type's own, Prometheus's is
//! `proxy::status::prometheus`, which the daemon's `/metrics` serves too)
//! and the man pages and
//! shell completions (`generate`); `intercept disable` moves rpcbind's own
//! `local` registrations with `local_entries`. The control socket itself is the
//! daemon's (`daemon::control`); the status it sends is
//! `proxy::status::Status`. It may import `proxy`, `protocol` and `host`;
//! nothing in `proxy`, `protocol` or `host` imports it.

pub mod check;
mod client;
pub mod flush;
pub mod generate;
pub mod intercept;
mod local_entries;
pub mod query;
pub mod status;
pub mod text;
pub mod top;
