//! SQLSTATE codes the proxy sends in its own ErrorResponses (PostgreSQL Appendix A).

/// Class 08: a malformed or out-of-order protocol message.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// Class 08: generic connection exception.
pub const CONNECTION_EXCEPTION: &str = "08000";
/// Class 08: the connection to the upstream server failed after it was established.
pub const CONNECTION_FAILURE: &str = "08006";
/// Class 08: could not establish a connection (e.g. to the upstream server).
pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: &str = "08001";
/// Class 08: the server rejected the connection.
pub const SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION: &str = "08004";
/// Class 0A: feature not supported (also used for an unsupported protocol version).
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// Class 22: generic data exception.
pub const DATA_EXCEPTION: &str = "22000";
/// Class 22: a character not valid in the encoding (e.g. invalid UTF-8).
pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
/// Class 25: the statement is not allowed in a read-only transaction.
pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
/// Class 25: `idle_in_transaction_session_timeout` expired.
pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: &str = "25P03";
/// Class 26: unknown prepared statement.
pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
/// Class 28: authentication failed for reasons other than the password (unknown user, no rule).
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
/// Class 28: wrong password.
pub const INVALID_PASSWORD: &str = "28P01";
/// Class 34: unknown portal.
pub const INVALID_CURSOR_NAME: &str = "34000";
/// Class 3D: unknown database.
pub const INVALID_CATALOG_NAME: &str = "3D000";
/// Class 42: generic syntax error.
pub const SYNTAX_ERROR: &str = "42601";
/// Class 42: permission denied.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// Class 42: prepared statement already exists.
pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
/// Class 53: too many connections.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// Class 54: a limit was exceeded (e.g. message or statement size).
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
/// Class 57: the statement was cancelled.
pub const QUERY_CANCELED: &str = "57014";
/// Class 57: the administrator is shutting the server down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// Class 57: crash shutdown.
pub const CRASH_SHUTDOWN: &str = "57P02";
/// Class 57: the server is starting up or shutting down.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// Class 57: `idle_session_timeout` expired.
pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
/// Class XX: internal error.
pub const INTERNAL_ERROR: &str = "XX000";
