//! The masking position on the response path. Protocols hand result rows, with
//! their column metadata, to a `ResponseMasker` before they reach the client;
//! the masking engine itself is a separate piece that plugs in here.

use crate::model::Column;
use crate::pipeline::SessionInfo;

/// Plans masking for one result set. Called once per set of columns (e.g. per
/// PostgreSQL RowDescription), never per row.
pub trait ResponseMasker: Send + Sync + 'static {
    /// `None` means nothing in this result set needs masking, so the protocol
    /// may pass rows through untouched.
    fn plan(&self, session: &SessionInfo, columns: &[Column]) -> Option<Box<dyn RowMasker>>;
}

/// Masks the rows of one result set in place.
pub trait RowMasker: Send {
    /// Rewrites values (text or binary, per column) and returns how many it masked.
    /// A masked value must stay valid for its column's type and format.
    fn mask_row(&mut self, values: &mut [Option<Vec<u8>>]) -> u64;
}

/// The default: no masking configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMasking;

impl ResponseMasker for NoMasking {
    fn plan(&self, _: &SessionInfo, _: &[Column]) -> Option<Box<dyn RowMasker>> {
        None
    }
}
