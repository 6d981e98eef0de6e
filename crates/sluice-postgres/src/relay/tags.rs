//! Message type bytes, named per direction: the same byte means different
//! messages from the client and from the server (`D` is Describe one way and
//! DataRow the other).

/// Messages a client (frontend) sends.
pub(crate) mod frontend {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const TERMINATE: u8 = b'X';
    /// The object kind byte of Describe and Close.
    pub const KIND_STATEMENT: u8 = b'S';
    pub const KIND_PORTAL: u8 = b'P';
}

/// Messages the server (backend) sends.
pub(crate) mod backend {
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const NO_DATA: u8 = b'n';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const DATA_ROW: u8 = b'D';
    pub const COPY_OUT: u8 = b'H';
    pub const COPY_BOTH: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const EMPTY_QUERY: u8 = b'I';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const NOTICE: u8 = b'N';
    pub const ERROR: u8 = b'E';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NOTIFICATION: u8 = b'A';
}
