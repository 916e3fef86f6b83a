//! PEP 440 versions and their ordering, as `packaging.version` has it:
//! epochs, release segments compared numerically with trailing zeros
//! ignored, `dev` < `a` < `b` < `rc` < final < `post`, and local labels.
//! Accepts the normalised spellings (`alpha`, `c`, `pre`, `-1` for a
//! post-release, a leading `v`, `-` `_` `.` separators).

use std::cmp::Ordering;

/// A parsed version, ordered as PEP 440 says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    epoch: u64,
    release: Vec<u64>,
    pre: Option<(PreKind, u64)>,
    post: Option<u64>,
    dev: Option<u64>,
    local: Vec<LocalPart>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PreKind {
    Alpha,
    Beta,
    Candidate,
}

/// Local segments: strings sort before numbers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum LocalPart {
    Text(String),
    Number(u64),
}

impl Version {
    /// Parses `text`; `None` when it is not a PEP 440 version.
    pub fn parse(text: &str) -> Option<Version> {
        let lower = text.trim().to_ascii_lowercase();
        let (public, local) = match lower.split_once('+') {
            Some((public, local)) => (public, Some(local)),
            None => (lower.as_str(), None),
        };
        let mut rest = public.strip_prefix('v').unwrap_or(public);
        let epoch = match rest.split_once('!') {
            Some((epoch, tail)) => {
                rest = tail;
                epoch.parse().ok()?
            }
            None => 0,
        };
        let (release, mut rest) = release(rest)?;
        let pre = labelled(
            &mut rest,
            &[
                ("alpha", PreKind::Alpha),
                ("a", PreKind::Alpha),
                ("beta", PreKind::Beta),
                ("b", PreKind::Beta),
                ("rc", PreKind::Candidate),
                ("c", PreKind::Candidate),
                ("preview", PreKind::Candidate),
                ("pre", PreKind::Candidate),
            ],
        );
        let post = labelled(&mut rest, &[("post", ()), ("rev", ()), ("r", ())])
            .map(|(_, n)| n)
            .or_else(|| implicit_post(&mut rest));
        let dev = labelled(&mut rest, &[("dev", ())]).map(|(_, n)| n);
        if !rest.is_empty() {
            return None;
        }
        let local = match local {
            None => Vec::new(),
            Some(label) => label
                .split(['.', '-', '_'])
                .map(|part| match part.parse() {
                    Ok(n) => Some(LocalPart::Number(n)),
                    Err(_) if !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()) => {
                        Some(LocalPart::Text(part.to_owned()))
                    }
                    Err(_) => None,
                })
                .collect::<Option<_>>()?,
        };
        Some(Version { epoch, release, pre, post, dev, local })
    }
}

/// `1.2.3` at the start of `text`; the rest after it.
fn release(text: &str) -> Option<(Vec<u64>, &str)> {
    let mut parts = Vec::new();
    let mut rest = text;
    loop {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        parts.push(rest[..digits].parse().ok()?);
        rest = &rest[digits..];
        match rest.strip_prefix('.') {
            Some(tail) if tail.starts_with(|c: char| c.is_ascii_digit()) => rest = tail,
            _ => return Some((parts, rest)),
        }
    }
}

/// An optional separator, one of `labels`, an optional separator and an
/// optional number (0 when absent); consumed from `rest` when present.
fn labelled<T: Copy>(rest: &mut &str, labels: &[(&str, T)]) -> Option<(T, u64)> {
    let text = rest.strip_prefix(['.', '-', '_']).unwrap_or(rest);
    let (label, kind) = labels.iter().find(|(label, _)| text.starts_with(label))?;
    let after = &text[label.len()..];
    let after_sep = after.strip_prefix(['.', '-', '_']).unwrap_or(after);
    let digits = after_sep.find(|c: char| !c.is_ascii_digit()).unwrap_or(after_sep.len());
    let (number, tail) =
        if digits == 0 { (0, after) } else { (after_sep[..digits].parse().ok()?, &after_sep[digits..]) };
    *rest = tail;
    Some((*kind, number))
}

/// The `1.0-1` spelling of a post-release.
fn implicit_post(rest: &mut &str) -> Option<u64> {
    let digits = rest.strip_prefix('-')?;
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let number = digits[..end].parse().ok()?;
    *rest = &digits[end..];
    Some(number)
}

/// Where a version sits between `dev`, pre-releases, the final release and
/// post-releases of the same release segment.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// `1.0.dev1`: before every pre-release of 1.0.
    DevOnly,
    Pre(PreKind, u64),
    Final,
}

impl Version {
    fn trimmed_release(&self) -> &[u64] {
        let keep = self.release.iter().rposition(|n| *n != 0).map_or(0, |i| i + 1);
        &self.release[..keep]
    }

    fn stage(&self) -> Stage {
        match (self.pre, self.post, self.dev) {
            (Some((kind, n)), _, _) => Stage::Pre(kind, n),
            (None, None, Some(_)) => Stage::DevOnly,
            (None, _, _) => Stage::Final,
        }
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| self.trimmed_release().cmp(other.trimmed_release()))
            .then_with(|| self.stage().cmp(&other.stage()))
            // No post-release sorts before any post-release (`None < Some`).
            .then_with(|| self.post.cmp(&other.post))
            // No dev-release sorts after any dev-release.
            .then_with(|| self.dev.is_none().cmp(&other.dev.is_none()).then(self.dev.cmp(&other.dev)))
            .then_with(|| self.local.cmp(&other.local))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap_or_else(|| panic!("{text} must parse"))
    }

    #[test]
    fn the_pep_440_example_order() {
        let ordered = [
            "1.0.dev456",
            "1.0a1",
            "1.0a2.dev456",
            "1.0a12.dev456",
            "1.0a12",
            "1.0b1.dev456",
            "1.0b2",
            "1.0b2.post345.dev456",
            "1.0b2.post345",
            "1.0rc1.dev456",
            "1.0rc1",
            "1.0",
            "1.0+abc.5",
            "1.0+abc.7",
            "1.0+5",
            "1.0.post456.dev34",
            "1.0.post456",
            "1.0.15",
            "1.1.dev1",
            "1!0.1",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn numeric_not_string_comparison() {
        assert!(v("1.10.0") > v("1.9.3"));
        assert!(v("2.0") > v("1.99"));
        assert!(v("0.13.0") > v("0.3.99"));
    }

    #[test]
    fn normalised_spellings_are_equal() {
        assert_eq!(v("1.0").cmp(&v("1.0.0")), Ordering::Equal);
        assert_eq!(v("1.0alpha1").cmp(&v("1.0a1")), Ordering::Equal);
        assert_eq!(v("1.0-1").cmp(&v("1.0.post1")), Ordering::Equal);
        assert_eq!(v("v2.1RC3").cmp(&v("2.1rc3")), Ordering::Equal);
        assert_eq!(v("1.0c1").cmp(&v("1.0rc1")), Ordering::Equal);
        assert_eq!(v("1.0-dev2").cmp(&v("1.0.dev2")), Ordering::Equal);
    }

    #[test]
    fn garbage_is_refused() {
        for text in ["", "x", "1..0", "1.0 beta?", "1.0+", "1.0+a..b", "one"] {
            assert!(Version::parse(text).is_none(), "{text}");
        }
    }
}
