//! Click and open tracking in an email's HTML: each `http(s)` link of an `<a>` or
//! `<area>` (but the unsubscribe link) is rewritten to the collector's `/v1/click`, which records `Email Link
//! Clicked` and redirects to it with the person's visit token; a 1×1 image from
//! `/v1/open` records `Email Opened` when the mail client shows images. The tokens are
//! sealed ([`cairn_bus::links`]). Text bodies are left as they are.

use cairn_bus::links::{self, Click, Email, Purpose};

/// `html` with its links tracked and an open pixel, for `email`; the links lead to
/// `public_url`, sealed with `secret`. `unsubscribe_url` is left alone.
pub fn track(
    html: &str,
    email: &Email,
    secret: &str,
    public_url: &str,
    unsubscribe_url: Option<&str>,
) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len() + 512);
    let mut from = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find("href") {
        let at = search + found;
        search = at + 4;
        // `href`, optional spaces, `=`, optional spaces, a quote.
        let rest = &lower[search..];
        let after_name = rest.len() - rest.trim_start().len();
        if !rest[after_name..].starts_with('=') {
            continue;
        }
        let after_equals = &rest[after_name + 1..];
        let spaces = after_equals.len() - after_equals.trim_start().len();
        let value_at = search + after_name + 1 + spaces;
        let Some(quote) = html[value_at..]
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
        else {
            continue;
        };
        let start = value_at + 1;
        let Some(length) = html[start..].find(quote) else {
            break;
        };
        let end = start + length;
        let url = html[start..end].trim().replace("&amp;", "&");
        let scheme = url.to_ascii_lowercase();
        let tracked = (scheme.starts_with("http://") || scheme.starts_with("https://"))
            && Some(url.as_str()) != unsubscribe_url
            && is_link(&lower[..at]);
        if tracked {
            let token = links::seal(
                secret,
                Purpose::Click,
                &Click {
                    email: email.clone(),
                    url,
                },
            );
            out.push_str(&html[from..start]);
            out.push_str(&format!("{public_url}/v1/click?t={token}"));
            from = end;
        }
        search = end;
    }
    out.push_str(&html[from..]);
    let pixel = format!(
        "<img src=\"{public_url}/v1/open?t={}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0\">",
        links::seal(secret, Purpose::Open, email)
    );
    match out.to_ascii_lowercase().rfind("</body>") {
        Some(at) => out.insert_str(at, &pixel),
        None => out.push_str(&pixel),
    }
    out
}

/// Whether the attribute ending `before` belongs to an `<a>` or `<area>` element (not
/// a stylesheet's `<link>`, which mail clients load themselves).
fn is_link(before: &str) -> bool {
    let Some(tag) = before.rfind('<').map(|at| &before[at + 1..]) else {
        return false;
    };
    let name = tag
        .split(|c: char| c.is_ascii_whitespace() || c == '/')
        .next()
        .unwrap_or_default();
    !tag.contains('>') && (name == "a" || name == "area")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use cairn_bus::links::Person;

    use super::*;

    const SECRET: &str = "secret-0123456789";

    fn email() -> Email {
        Email {
            send: "k1".into(),
            campaign: "cart".into(),
            person: Person {
                user_id: None,
                anonymous_id: Some("a-1".into()),
                email: "ann@example.com".into(),
            },
        }
    }

    /// The links of `html`, opened where tracked.
    fn links_of(html: &str) -> Vec<String> {
        html.split("href=")
            .skip(1)
            .map(|rest| {
                let quote = rest.chars().next().unwrap();
                let value = rest[1..].split(quote).next().unwrap();
                match value.strip_prefix("https://t.example.com/v1/click?t=") {
                    Some(token) => {
                        let click: Click = links::open(SECRET, Purpose::Click, token).unwrap();
                        assert_eq!(click.email, email());
                        format!("tracked {}", click.url)
                    }
                    None => value.to_string(),
                }
            })
            .collect()
    }

    #[test]
    fn web_links_lead_through_the_collector_and_others_stay() {
        let html = "<html><body><p><a href=\"https://shop.example.com/cart?a=1&amp;b=2\">Cart</a> \
                    <A HREF = 'http://example.com/x'>x</A> <a href=\"mailto:help@example.com\">mail</a> \
                    <a href=\"#top\">top</a> <a href=\"https://t.example.com/v1/unsubscribe?t=abc\">unsubscribe</a>\
                    <link rel=\"stylesheet\" href=\"https://cdn.example.com/s.css\"></p></body></html>";
        let tracked = track(
            html,
            &email(),
            SECRET,
            "https://t.example.com",
            Some("https://t.example.com/v1/unsubscribe?t=abc"),
        );
        assert_eq!(
            links_of(&tracked.replace("HREF = ", "href=")),
            vec![
                "tracked https://shop.example.com/cart?a=1&b=2",
                "tracked http://example.com/x",
                "mailto:help@example.com",
                "#top",
                "https://t.example.com/v1/unsubscribe?t=abc",
                "https://cdn.example.com/s.css",
            ]
        );
        // The pixel goes in before the end of the body.
        let pixel_at = tracked
            .find("<img src=\"https://t.example.com/v1/open?t=")
            .unwrap();
        assert_eq!(
            &tracked[tracked.find("</body>").unwrap()..],
            "</body></html>"
        );
        assert!(pixel_at < tracked.find("</body>").unwrap());
        let token = tracked[pixel_at..]
            .split("t=")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(
            links::open::<Email>(SECRET, Purpose::Open, token).unwrap(),
            email()
        );
    }

    #[test]
    fn odd_markup_is_left_as_it_is() {
        for html in [
            "href",
            "<a href=>x</a>",
            "<a href=\"https://x.example.com",
            "hrefhref='",
        ] {
            let tracked = track(html, &email(), SECRET, "https://t.example.com", None);
            assert!(tracked.starts_with(html), "{html} → {tracked}");
        }
        // Without a body element the pixel ends the HTML.
        let tracked = track("<p>hi</p>", &email(), SECRET, "https://t.example.com", None);
        assert!(tracked.starts_with("<p>hi</p><img "));
    }
}
