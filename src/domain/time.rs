//! Time as the service keeps it.

use chrono::{DateTime, SubsecRound, Utc};

/// The current time at the precision PostgreSQL stores (microseconds), so that a timestamp the
/// service hands out is exactly the one it stored and can be used in a page cursor.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
