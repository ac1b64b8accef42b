//! CORS for browsers calling through grpc-web: which origins, and which headers they may send
//! and read.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::{CorsOrigins, StartupError};

/// CORS for browsers calling through grpc-web.
pub(super) fn cors(origins: &CorsOrigins) -> Result<CorsLayer, StartupError> {
    let allow_origin = match origins {
        CorsOrigins::Any => AllowOrigin::mirror_request(),
        CorsOrigins::List(list) => {
            let values = list
                .iter()
                .map(|origin| {
                    HeaderValue::from_str(origin)
                        .map_err(|e| StartupError::Cors(format!("{origin:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            AllowOrigin::list(values)
        }
    };
    let header = HeaderName::from_static;
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            header("authorization"),
            header("content-type"),
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
            header("x-request-id"),
            header("x-correlation-id"),
            header("traceparent"),
            header("tracestate"),
            header("connect-protocol-version"),
            header("connect-timeout-ms"),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
            header("x-request-id"),
        ])
        .max_age(Duration::from_secs(3600)))
}
