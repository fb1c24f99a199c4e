//! `GET /cairn.js`: the browser tag (`assets/cairn.js`), gzipped for clients that take
//! it, cached by browsers for five minutes.

use std::sync::LazyLock;

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, header};

/// The tag as written.
pub const SOURCE: &str = include_str!("../assets/cairn.js");

static GZIPPED: LazyLock<Vec<u8>> = LazyLock::new(|| {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(SOURCE.as_bytes());
    encoder.finish().unwrap_or_default()
});

/// The tag gzipped, as served to clients that accept gzip.
pub fn gzipped() -> &'static [u8] {
    &GZIPPED
}

pub async fn serve(headers: HeaderMap) -> Response {
    let gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| coding.split(';').next().unwrap_or_default().trim() == "gzip");
    let mut response = if gzip {
        (
            [(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"))],
            gzipped(),
        )
            .into_response()
    } else {
        SOURCE.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_small_and_gzips_to_what_it_was() {
        use std::io::Read as _;
        let size = gzipped().len();
        println!("cairn.js: {} bytes, {size} gzipped", SOURCE.len());
        assert!(size < 10 * 1024, "cairn.js is {size} bytes gzipped");
        let mut unzipped = String::new();
        flate2::read::GzDecoder::new(gzipped())
            .read_to_string(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, SOURCE);
    }
}
