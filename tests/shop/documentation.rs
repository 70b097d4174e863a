//! The documentation holds together: every relative link in the README, `docs/` and
//! `.ci/README.md` reaches a file (and a heading, when it names one), and the one
//! configuration table (docs/architecture.md, "Configuration") lists exactly the settings the
//! services read, and the kit's map (docs/architecture.md, "The kit") exactly its files.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use service_kit::config::VARIABLES;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Markdown pages a reader follows links between.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages = vec![root.join("README.md"), root.join(".ci/README.md")];
    let docs = std::fs::read_dir(root.join("docs")).expect("docs/");
    pages.extend(
        docs.filter_map(|entry| Some(entry.ok()?.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "md")),
    );
    pages
}

/// The page's text outside fenced code blocks (a link in a shell example is not a link).
fn prose(page: &str) -> String {
    let mut in_code = false;
    page.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                return false;
            }
            !in_code
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The targets of `[text](target)` links.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(rest[..end].trim().to_owned());
            rest = &rest[end..];
        }
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(page: &str) -> BTreeSet<String> {
    prose(page)
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| anchor(heading.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_relative_link_in_the_docs_reaches_its_file_and_heading() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = read(&page);
        let dir = page.parent().expect("a page lives in a directory");
        for target in link_targets(&prose(&text)) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let linked = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            if !linked.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
            } else if !fragment.is_empty()
                && linked.extension().is_some_and(|ext| ext == "md")
                && !anchors(&read(&linked)).contains(fragment)
            {
                broken.push(format!("{}: {target} (no such heading)", page.display()));
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the parser right?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The text of `page` from the heading starting `heading` to the next `## ` heading.
fn section<'a>(page: &'a str, heading: &str) -> &'a str {
    page.split_once(heading)
        .map(|(_, rest)| {
            rest.split_once("\n## ")
                .map_or(rest, |(section, _)| section)
        })
        .unwrap_or_else(|| panic!("docs/architecture.md has a section {heading:?}"))
}

/// The names in the first column of a Markdown table's rows (several per row, comma-separated).
fn first_column(table: &str) -> BTreeSet<&str> {
    table
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|row| row.split('|').nth(1))
        .flat_map(|names| names.split(','))
        .map(|name| name.trim().trim_matches('`'))
        .collect()
}

#[test]
fn the_configuration_table_lists_exactly_the_settings_the_services_read() {
    let architecture = read(&root().join("docs/architecture.md"));
    let documented = first_column(section(&architecture, "## 10. Configuration"));
    let read_by_services: BTreeSet<&str> = VARIABLES
        .iter()
        .chain(shop::registry::SERVICES.iter().flat_map(|s| s.variables))
        .copied()
        .collect();
    assert_eq!(
        documented, read_by_services,
        "docs/architecture.md's configuration table and the variables the kit and the services read \
         differ"
    );
}

/// Every `.rs` file under `dir`, as paths relative to `base`.
/// The range each duration setting and orders' settings may take, as the code holds it, is
/// the one its row of the configuration table gives.
#[test]
fn the_configuration_table_gives_each_ranges_as_the_code_holds_it() {
    let architecture = read(&root().join("docs/architecture.md"));
    let table = section(&architecture, "## 10. Configuration");
    let row = |name: &str| {
        table
            .lines()
            .find(|line| line.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("{name} has a row"))
            .to_owned()
    };
    let mut ranges: Vec<(&str, u128, u128)> = service_kit::config::DURATIONS
        .iter()
        .map(|setting| {
            let written = |d: &std::time::Duration| setting.unit.written(*d);
            let (low, high) = (setting.range.start(), setting.range.end());
            (setting.name, written(low), written(high))
        })
        .collect();
    let deadlines = orders::settings::ORDER_DEADLINES;
    ranges.push((
        "ORDER_DEADLINE_MS",
        deadlines.start().as_millis(),
        deadlines.end().as_millis(),
    ));
    let pending = orders::settings::MAX_PENDING_ORDERS;
    ranges.push((
        "MAX_PENDING_ORDERS",
        u128::from(*pending.start()),
        u128::from(*pending.end()),
    ));
    for (name, low, high) in ranges {
        let row = row(name);
        assert!(
            row.contains(&format!("`{low}` ")) && row.contains(&format!(" `{high}`")),
            "{name}'s row gives {low} to {high}: {row}"
        );
    }
}

fn rust_files(dir: &Path, base: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path, base));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path.strip_prefix(base).expect("under the base");
            files.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
    files
}

#[test]
fn the_kit_map_lists_exactly_the_kits_files() {
    let architecture = read(&root().join("docs/architecture.md"));
    let mapped: BTreeSet<String> = section(&architecture, "## 8. The kit")
        .lines()
        .filter(|line| line.starts_with("kit/src/"))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let services = root().join("services");
    let files: BTreeSet<String> = rust_files(&services.join("kit/src"), &services)
        .into_iter()
        .collect();
    assert_eq!(
        mapped, files,
        "docs/architecture.md's map of the kit and the files in services/kit/src differ"
    );
}

#[test]
fn every_kit_path_the_docs_name_exists() {
    let services = root().join("services");
    let mut missing = Vec::new();
    for page in pages() {
        let text = read(&page);
        for (at, _) in text.match_indices("kit/src/") {
            let path: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "_/.".contains(*c))
                .collect();
            let path = path.trim_end_matches('.');
            if !services.join(path).exists() {
                missing.push(format!("{}: {path}", page.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the docs name kit files that are not there:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_metrics_table_lists_exactly_the_metrics_the_services_describe() {
    let architecture = read(&root().join("docs/architecture.md"));
    let table = architecture
        .split_once("**Metrics**")
        .and_then(|(_, rest)| rest.split_once("| Metric |"))
        .map(|(_, rest)| rest.split_once("\n\n").map_or(rest, |(table, _)| table))
        .expect("docs/architecture.md has a metrics table");
    let documented = first_column(table);
    let described: BTreeSet<&str> = service_kit::KIT_METRICS
        .iter()
        .chain(orders::metrics::METRICS)
        .map(|metric| metric.name)
        .collect();
    assert_eq!(
        documented, described,
        "docs/architecture.md's metrics table and the metrics the services describe differ"
    );
}

/// The text with every run of whitespace as one space (prose wraps anywhere).
fn flowing(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn number_word(n: usize) -> &'static str {
    [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ]
    .get(n)
    .copied()
    .unwrap_or("many")
}

#[test]
fn the_counts_and_ranges_the_docs_give_are_the_codes() {
    let architecture = flowing(&read(&root().join("docs/architecture.md")));
    let operations = flowing(&read(&root().join("docs/operations.md")));
    let ports: BTreeSet<u16> = shop::registry::SERVICES
        .iter()
        .map(|service| service.default_addr.port())
        .collect();
    let (first, last) = (ports.first(), ports.last());
    let claims = [
        (
            &architecture,
            format!(
                "on its own port ({}–{})",
                first.copied().unwrap_or_default(),
                last.copied().unwrap_or_default()
            ),
        ),
        (
            &architecture,
            format!("the {} events", number_word(shared_events::CATALOG.len())),
        ),
        (
            &architecture,
            format!(
                "the orchestrated twin sends {}",
                number_word(shared_events::COMMANDS.len())
            ),
        ),
        (
            &operations,
            format!(
                "(`DB_POOL_SIZE`, {} at two replicas",
                shop::fleet::pool_size_per_replica(2)
            ),
        ),
    ];
    let missing: Vec<&str> = claims
        .iter()
        .filter(|(page, claim)| !page.contains(claim.as_str()))
        .map(|(_, claim)| claim.as_str())
        .collect();
    assert!(missing.is_empty(), "the docs do not say: {missing:?}");
}

#[test]
fn every_source_file_is_one_a_reader_can_hold_in_mind() {
    let root = root();
    let mut too_long = Vec::new();
    let mut folders = 0;
    let crates = std::fs::read_dir(root.join("services"))
        .expect("services/")
        .filter_map(|entry| Some(entry.ok()?.path().join("src")))
        .chain([root.join("shared-events/src")]);
    for src in crates.filter(|src| src.is_dir()) {
        for file in rust_files(&src, &root) {
            let text = read(&root.join(&file));
            if text.lines().count() > 500 {
                too_long.push(format!("{file}: {} lines", text.lines().count()));
            }
            // A folder says what it holds, first thing.
            if file.ends_with("/mod.rs") {
                folders += 1;
                assert!(
                    text.starts_with("//! "),
                    "{file} does not open with what it holds"
                );
            }
        }
    }
    assert!(
        folders >= 5,
        "only {folders} folders found: is the walk right?"
    );
    assert!(
        too_long.is_empty(),
        "over 500 lines:\n{}",
        too_long.join("\n")
    );
}

#[test]
fn the_readme_is_a_front_page() {
    let lines = read(&root().join("README.md")).lines().count();
    assert!(
        lines <= 260,
        "README.md has {lines} lines: the manual belongs in docs/"
    );
}

#[test]
fn anchors_follow_github() {
    assert_eq!(anchor(" 7. The HTTP APIs"), "7-the-http-apis");
    assert_eq!(
        anchor(" Check the books: `shop audit`"),
        "check-the-books-shop-audit"
    );
}
