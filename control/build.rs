//! Generates the tables behind `src/apiserver/protobuf.rs` (the Kubernetes protobuf decoder):
//!
//! * `k8s_protobuf_messages.rs`: every message of the Kubernetes `generated.proto` files, with
//!   its fields (tag, name, wire type, cardinality), read from the prost structs of the `k8s-pb`
//!   crate (a build-dependency, so cargo downloads it), plus the resource kinds k8s-pb knows.
//! * `k8s_openapi_types.rs`: a function registering every k8s-openapi type with a schemars
//!   generator, whose schemas give the exact JSON field names at run time.
//!
//! Both crates' sources are located with `cargo metadata`; nothing is hand-copied.

use std::collections::{BTreeMap, HashMap};
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set for build scripts"));

    let (openapi_version, openapi_minor) = k8s_openapi_enabled_version();
    let packages = cargo_packages();
    let k8s_pb = package_dir(&packages, "k8s-pb", None);
    let k8s_openapi = package_dir(&packages, "k8s-openapi", Some(&openapi_version));

    let messages = generate_messages(&k8s_pb.join("src"));
    fs::write(out_dir.join("k8s_protobuf_messages.rs"), messages)
        .expect("write k8s_protobuf_messages.rs");

    let types =
        generate_openapi_types(&k8s_openapi.join("src").join(format!("v1_{openapi_minor}")));
    fs::write(out_dir.join("k8s_openapi_types.rs"), types).expect("write k8s_openapi_types.rs");
}

// ---------------------------------------------------------------------------------------------
// Locating the crates

/// The k8s-openapi version in use and the Kubernetes minor version its enabled feature selects,
/// from the `links` metadata its build script publishes (`DEP_K8S_OPENAPI_<ver>_VERSION`).
fn k8s_openapi_enabled_version() -> (String, u32) {
    for (key, value) in env::vars() {
        let Some(rest) = key.strip_prefix("DEP_K8S_OPENAPI_") else {
            continue;
        };
        let Some(ver) = rest.strip_suffix("_VERSION") else {
            continue;
        };
        let encoded: u32 = value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("unexpected {key}={value}"));
        return (ver.replace('_', "."), (encoded >> 8) & 0xff);
    }
    panic!("k8s-openapi did not publish its enabled version (DEP_K8S_OPENAPI_*_VERSION)");
}

/// `cargo metadata`'s package list.
fn cargo_packages() -> Vec<serde_json::Value> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(&env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("Cargo.toml");
    let run = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(&manifest);
        if offline {
            cmd.arg("--offline");
        }
        cmd.output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| o.stdout)
    };
    // Everything the build needs is downloaded already; only go online if that is not enough.
    let stdout = run(true)
        .or_else(|| run(false))
        .expect("`cargo metadata` failed");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&stdout).expect("`cargo metadata` printed invalid JSON");
    match meta.get_mut("packages").map(serde_json::Value::take) {
        Some(serde_json::Value::Array(packages)) => packages,
        _ => panic!("`cargo metadata` printed no packages"),
    }
}

/// The source directory of the named package (of the given version, if any).
fn package_dir(packages: &[serde_json::Value], name: &str, version: Option<&str>) -> PathBuf {
    let found = packages
        .iter()
        .find(|p| p["name"] == name && version.is_none_or(|v| p["version"].as_str() == Some(v)));
    let manifest = found
        .and_then(|p| p["manifest_path"].as_str())
        .unwrap_or_else(|| panic!("package {name} {version:?} not found by `cargo metadata`"));
    Path::new(manifest)
        .parent()
        .expect("manifest path has a parent")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, with its module path relative to `dir`.
fn rust_files(dir: &Path, module: &[String], out: &mut Vec<(PathBuf, Vec<String>)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 file name")
            .to_string();
        if path.is_dir() {
            let mut sub = module.to_vec();
            sub.push(name);
            rust_files(&path, &sub, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let mut m = module.to_vec();
            if stem != "mod" && stem != "lib" {
                m.push(stem.to_string());
            }
            out.push((path, m));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A small Rust lexer, enough for prost-generated code

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Punct(char),
    Other,
}

fn lex(src: &str) -> Vec<Tok> {
    let chars: Vec<char> = src.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    let ident_start = |c: char| c == '_' || c.is_alphabetic();
    let ident_char = |c: char| c == '_' || c.is_alphanumeric();
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || (next == Some('#') && raw_string_ahead(&chars, i + 1)))
        {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            j += 1; // opening quote
            let start = j;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    break;
                }
                j += 1;
            }
            toks.push(Tok::Str(chars[start..j.min(chars.len())].iter().collect()));
            i = j + 1 + hashes;
        } else if c == 'r' && next == Some('#') && chars.get(i + 2).is_some_and(|&c| ident_start(c))
        {
            // Raw identifier: r#type.
            let mut j = i + 2;
            while j < chars.len() && ident_char(chars[j]) {
                j += 1;
            }
            toks.push(Tok::Ident(chars[i + 2..j].iter().collect()));
            i = j;
        } else if c == '"' || (c == 'b' && next == Some('"')) {
            let mut j = if c == 'b' { i + 2 } else { i + 1 };
            let mut s = String::new();
            while j < chars.len() && chars[j] != '"' {
                if chars[j] == '\\' && j + 1 < chars.len() {
                    j += 1;
                    s.push(match chars[j] {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    });
                } else {
                    s.push(chars[j]);
                }
                j += 1;
            }
            toks.push(Tok::Str(s));
            i = j + 1;
        } else if c == '\'' {
            // A lifetime ('static) or a char literal ('a', '\n').
            let mut j = i + 1;
            if chars.get(j).is_some_and(|&c| ident_start(c)) {
                while j < chars.len() && ident_char(chars[j]) {
                    j += 1;
                }
                if chars.get(j) == Some(&'\'') {
                    j += 1; // a char literal like 'a'
                }
            } else {
                while j < chars.len() && chars[j] != '\'' {
                    if chars[j] == '\\' {
                        j += 1;
                    }
                    j += 1;
                }
                j += 1;
            }
            toks.push(Tok::Other);
            i = j;
        } else if ident_start(c) {
            let mut j = i;
            while j < chars.len() && ident_char(chars[j]) {
                j += 1;
            }
            toks.push(Tok::Ident(chars[i..j].iter().collect()));
            i = j;
        } else if c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && (ident_char(chars[j]) || chars[j] == '.') {
                j += 1;
            }
            toks.push(Tok::Other);
            i = j;
        } else {
            toks.push(Tok::Punct(c));
            i += 1;
        }
    }
    toks
}

/// After `r`, whether `#`s are followed by a quote (a raw string, not a raw identifier).
fn raw_string_ahead(chars: &[char], mut i: usize) -> bool {
    while chars.get(i) == Some(&'#') {
        i += 1;
    }
    chars.get(i) == Some(&'"')
}

fn is_ident(t: Option<&Tok>, s: &str) -> bool {
    matches!(t, Some(Tok::Ident(x)) if x == s)
}

fn is_punct(t: Option<&Tok>, c: char) -> bool {
    matches!(t, Some(Tok::Punct(x)) if *x == c)
}

/// Index just past the bracket matching the opening one at `open`.
fn skip_group(toks: &[Tok], open: usize) -> usize {
    let (o, c) = match toks[open] {
        Tok::Punct('(') => ('(', ')'),
        Tok::Punct('[') => ('[', ']'),
        Tok::Punct('{') => ('{', '}'),
        _ => return open + 1,
    };
    let mut depth = 0usize;
    let mut i = open;
    while i < toks.len() {
        if toks[i] == Tok::Punct(o) {
            depth += 1;
        } else if toks[i] == Tok::Punct(c) {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
        i += 1;
    }
    toks.len()
}

// ---------------------------------------------------------------------------------------------
// Reading the prost structs

#[derive(Debug)]
struct RawField {
    name: String,
    /// The `#[prost(...)]` items: (key, optional string value).
    attr: Vec<(String, Option<String>)>,
    /// The last path in the field's Rust type (the message type for message fields).
    type_path: Vec<String>,
    /// Whether that path started with `::` (an external crate).
    type_path_absolute: bool,
}

#[derive(Debug)]
struct RawMessage {
    module: Vec<String>,
    name: String,
    fields: Vec<RawField>,
}

#[derive(Debug)]
struct RawResource {
    module: Vec<String>,
    name: String,
    api_version: String,
    kind: String,
}

fn parse_prost_file(
    toks: &[Tok],
    module: &[String],
    messages: &mut Vec<RawMessage>,
    resources: &mut Vec<RawResource>,
) {
    // (module path, brace depth at which it closes)
    let mut modules: Vec<(Vec<String>, usize)> = vec![(module.to_vec(), 0)];
    let mut depth = 0usize;
    let mut derives_message = false;
    let mut i = 0;
    while i < toks.len() {
        let current = modules.last().expect("root module").0.clone();
        match &toks[i] {
            Tok::Punct('#') if is_punct(toks.get(i + 1), '[') => {
                let end = skip_group(toks, i + 1);
                let attr = &toks[i + 2..end.saturating_sub(1).max(i + 2)];
                if is_ident(attr.first(), "derive")
                    && attr.iter().any(|t| is_ident(Some(t), "Message"))
                {
                    derives_message = true;
                }
                i = end;
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some(Tok::Ident(name)), true) =
                    (toks.get(i + 1), is_punct(toks.get(i + 2), '{'))
                {
                    depth += 1;
                    let mut m = current.clone();
                    m.push(name.clone());
                    modules.push((m, depth));
                    i += 3;
                } else {
                    i += 1;
                }
            }
            Tok::Ident(kw) if kw == "struct" => {
                let name = match toks.get(i + 1) {
                    Some(Tok::Ident(n)) => n.clone(),
                    _ => {
                        i += 1;
                        continue;
                    }
                };
                if is_punct(toks.get(i + 2), '{') {
                    let end = skip_group(toks, i + 2);
                    if derives_message {
                        let fields = parse_struct_fields(&toks[i + 3..end - 1]);
                        messages.push(RawMessage {
                            module: current.clone(),
                            name,
                            fields,
                        });
                    }
                    i = end;
                } else {
                    i += 2;
                }
                derives_message = false;
            }
            Tok::Ident(kw) if kw == "impl" => {
                // impl crate::Resource for Name { const API_VERSION: &'static str = "..."; ... }
                let is_resource = is_ident(toks.get(i + 1), "crate")
                    && is_punct(toks.get(i + 2), ':')
                    && is_punct(toks.get(i + 3), ':')
                    && is_ident(toks.get(i + 4), "Resource")
                    && is_ident(toks.get(i + 5), "for");
                match (is_resource, toks.get(i + 6)) {
                    (true, Some(Tok::Ident(name))) if is_punct(toks.get(i + 7), '{') => {
                        let end = skip_group(toks, i + 7);
                        let consts = parse_consts(&toks[i + 8..end - 1]);
                        if let (Some(api_version), Some(kind)) =
                            (consts.get("API_VERSION"), consts.get("KIND"))
                        {
                            resources.push(RawResource {
                                module: current.clone(),
                                name: name.clone(),
                                api_version: api_version.clone(),
                                kind: kind.clone(),
                            });
                        }
                        i = end;
                    }
                    _ => i += 1,
                }
                derives_message = false;
            }
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                if modules.len() > 1 && modules.last().is_some_and(|(_, d)| *d == depth) {
                    modules.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
}

/// `const NAME: Type = "value";` items of an impl block.
fn parse_consts(toks: &[Tok]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut i = 0;
    while i < toks.len() {
        if let (true, Some(Tok::Ident(name))) = (is_ident(toks.get(i), "const"), toks.get(i + 1)) {
            let mut j = i + 2;
            while j < toks.len() && !is_punct(toks.get(j), '=') && !is_punct(toks.get(j), ';') {
                j += 1;
            }
            if let (true, Some(Tok::Str(value))) = (is_punct(toks.get(j), '='), toks.get(j + 1)) {
                out.insert(name.clone(), value.clone());
            }
            i = j;
        }
        i += 1;
    }
    out
}

fn parse_struct_fields(toks: &[Tok]) -> Vec<RawField> {
    let mut fields = Vec::new();
    let mut attr: Option<Vec<(String, Option<String>)>> = None;
    let mut i = 0;
    while i < toks.len() {
        if is_punct(toks.get(i), '#') && is_punct(toks.get(i + 1), '[') {
            let end = skip_group(toks, i + 1);
            let inner = &toks[i + 2..end - 1];
            if is_ident(inner.first(), "prost") && is_punct(inner.get(1), '(') {
                attr = Some(parse_prost_attr(&inner[2..inner.len() - 1]));
            }
            i = end;
            continue;
        }
        if is_ident(toks.get(i), "pub") {
            i += 1;
            if is_punct(toks.get(i), '(') {
                i = skip_group(toks, i);
            }
            continue;
        }
        if let (Some(Tok::Ident(name)), true) = (toks.get(i), is_punct(toks.get(i + 1), ':')) {
            // The type runs to the next comma outside angle brackets.
            let mut j = i + 2;
            let mut angle = 0i32;
            while j < toks.len() {
                match toks[j] {
                    Tok::Punct('<') => angle += 1,
                    Tok::Punct('>') => angle -= 1,
                    Tok::Punct(',') if angle <= 0 => break,
                    _ => {}
                }
                j += 1;
            }
            let (type_path, type_path_absolute) = last_path(&toks[i + 2..j]);
            if let Some(attr) = attr.take() {
                fields.push(RawField {
                    name: name.clone(),
                    attr,
                    type_path,
                    type_path_absolute,
                });
            }
            i = j + 1;
            continue;
        }
        i += 1;
    }
    fields
}

/// `string, optional, tag = "1"` -> [("string", None), ("optional", None), ("tag", Some("1"))].
fn parse_prost_attr(toks: &[Tok]) -> Vec<(String, Option<String>)> {
    let mut items = Vec::new();
    for part in toks.split(|t| *t == Tok::Punct(',')) {
        match part {
            [Tok::Ident(k)] => items.push((k.clone(), None)),
            [Tok::Ident(k), Tok::Punct('='), Tok::Str(v)] => {
                items.push((k.clone(), Some(v.clone())))
            }
            [] => {}
            other => panic!("unexpected #[prost] item {other:?}"),
        }
    }
    items
}

/// The last `a::b::C` path of a type, and whether it started with `::`.
fn last_path(toks: &[Tok]) -> (Vec<String>, bool) {
    let mut best = (Vec::new(), false);
    let mut i = 0;
    while i < toks.len() {
        let absolute = is_punct(toks.get(i), ':') && is_punct(toks.get(i + 1), ':');
        let start = if absolute { i + 2 } else { i };
        if let Some(Tok::Ident(_)) = toks.get(start) {
            let mut path = Vec::new();
            let mut j = start;
            while let Some(Tok::Ident(seg)) = toks.get(j) {
                path.push(seg.clone());
                if is_punct(toks.get(j + 1), ':') && is_punct(toks.get(j + 2), ':') {
                    j += 3;
                } else {
                    j += 1;
                    break;
                }
            }
            best = (path, absolute);
            i = j;
        } else {
            i += 1;
        }
    }
    best
}

/// The protobuf scalar/message type of a prost type name (`string`, `int32`, `message`, ...).
fn wire_type(kind: &str, message: Option<usize>) -> String {
    let v = match kind {
        "double" => "Double",
        "float" => "Float",
        "int32" => "Int32",
        "int64" => "Int64",
        "uint32" => "Uint32",
        "uint64" => "Uint64",
        "sint32" => "Sint32",
        "sint64" => "Sint64",
        "fixed32" => "Fixed32",
        "fixed64" => "Fixed64",
        "sfixed32" => "Sfixed32",
        "sfixed64" => "Sfixed64",
        "bool" => "Bool",
        "string" => "String",
        "bytes" => "Bytes",
        "enumeration" | "enum" => "Int32",
        "message" | "group" => {
            return format!("Ty::Message({})", message.expect("message type resolved"));
        }
        other => panic!("unsupported prost type {other:?}"),
    };
    format!("Ty::{v}")
}

fn generate_messages(src: &Path) -> String {
    let mut files = Vec::new();
    rust_files(src, &[], &mut files);
    let mut messages = Vec::new();
    let mut resources = Vec::new();
    for (path, module) in &files {
        let text =
            fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        parse_prost_file(&lex(&text), module, &mut messages, &mut resources);
    }
    assert!(
        messages.len() > 100,
        "found only {} messages in {}",
        messages.len(),
        src.display()
    );

    let index: HashMap<(Vec<String>, String), usize> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| ((m.module.clone(), m.name.clone()), i))
        .collect();
    let resolve = |module: &[String], path: &[String], absolute: bool| -> Option<usize> {
        if absolute || path.is_empty() {
            return None;
        }
        let mut m: Vec<String> = module.to_vec();
        let mut rest = path;
        match rest[0].as_str() {
            "crate" => {
                m.clear();
                rest = &rest[1..];
            }
            "self" => rest = &rest[1..],
            _ => {}
        }
        while rest.first().is_some_and(|s| s == "super") {
            m.pop()?;
            rest = &rest[1..];
        }
        let (name, dirs) = rest.split_last()?;
        m.extend(dirs.iter().cloned());
        index.get(&(m, name.clone())).copied()
    };

    let mut out = String::new();
    out.push_str("// @generated by control/build.rs from the k8s-pb crate's prost structs.\n");
    out.push_str("pub(super) static MESSAGES: &[MessageDesc] = &[\n");
    for m in &messages {
        let mut fields: BTreeMap<u32, String> = BTreeMap::new();
        for f in &m.fields {
            let get = |k: &str| f.attr.iter().find(|(key, _)| key == k);
            let tag: u32 = match get("tag").and_then(|(_, v)| v.as_deref()) {
                Some(t) => t.parse().expect("numeric tag"),
                None => continue, // oneof containers have `tags`; k8s protos have none
            };
            let (kind, kind_value) = f.attr.first().cloned().expect("prost attribute has a type");
            let message_ty = || {
                resolve(&m.module, &f.type_path, f.type_path_absolute).unwrap_or_else(|| {
                    panic!(
                        "cannot resolve type {:?} of {}::{}.{}",
                        f.type_path,
                        m.module.join("::"),
                        m.name,
                        f.name
                    )
                })
            };
            let (ty, card) = match kind.as_str() {
                "map" | "btree_map" | "hash_map" => {
                    let spec = kind_value.expect("map types");
                    let (k, v) = spec.split_once(',').expect("map key, value");
                    let (k, v) = (k.trim(), v.trim());
                    let v_kind = v.split('(').next().unwrap_or(v).trim();
                    let value_msg = (v_kind == "message").then(message_ty);
                    (
                        wire_type(v_kind, value_msg),
                        format!("Card::Map({})", wire_type(k, None)),
                    )
                }
                _ => {
                    let msg = matches!(kind.as_str(), "message" | "group").then(message_ty);
                    let card = if get("repeated").is_some() {
                        "Card::Repeated"
                    } else {
                        "Card::Single"
                    };
                    (wire_type(&kind, msg), card.to_string())
                }
            };
            fields.insert(
                tag,
                format!(
                    "FieldDesc {{ tag: {tag}, name: {:?}, ty: {ty}, card: {card} }}",
                    f.name
                ),
            );
        }
        let _ = writeln!(
            out,
            "    MessageDesc {{ package: {:?}, name: {:?}, fields: &[{}] }},",
            m.module.join("."),
            m.name,
            fields
                .values()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out.push_str("];\n\n");
    out.push_str("pub(super) static RESOURCES: &[ResourceDesc] = &[\n");
    for r in &resources {
        let message = resolve(&r.module, std::slice::from_ref(&r.name), false)
            .unwrap_or_else(|| panic!("resource {} is not a message", r.name));
        let _ = writeln!(
            out,
            "    ResourceDesc {{ api_version: {:?}, kind: {:?}, message: {message} }},",
            r.api_version, r.kind
        );
    }
    out.push_str("];\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Listing the k8s-openapi types

fn generate_openapi_types(root: &Path) -> String {
    let mut files = Vec::new();
    rust_files(root, &[], &mut files);
    let mut types = Vec::new();
    for (path, module) in &files {
        if path.file_name().and_then(|n| n.to_str()) != Some("mod.rs") {
            continue;
        }
        let dir = path.parent().expect("mod.rs has a directory");
        let toks = lex(&fs::read_to_string(path).expect("read k8s-openapi mod.rs"));
        // pub use self::file::Type;
        for w in toks.windows(9) {
            if let [Tok::Ident(p), Tok::Ident(u), Tok::Ident(s), Tok::Punct(':'), Tok::Punct(':'), Tok::Ident(file), Tok::Punct(':'), Tok::Punct(':'), Tok::Ident(ty)] =
                w
            {
                if p != "pub" || u != "use" || s != "self" {
                    continue;
                }
                let Ok(text) = fs::read_to_string(dir.join(format!("{file}.rs"))) else {
                    continue;
                };
                if text.contains(&format!("impl crate::schemars::JsonSchema for {ty} {{")) {
                    let mut path = vec!["k8s_openapi".to_string()];
                    path.extend(module.iter().cloned());
                    path.push(ty.clone());
                    types.push(path.join("::"));
                }
            }
        }
    }
    assert!(
        types.len() > 100,
        "found only {} k8s-openapi types in {}",
        types.len(),
        root.display()
    );
    let mut out = String::new();
    out.push_str("// @generated by control/build.rs from the k8s-openapi sources.\n");
    out.push_str("/// Registers every k8s-openapi type's schema with `g`.\n");
    out.push_str("pub(super) fn register_openapi_types(g: &mut schemars::SchemaGenerator) {\n");
    for t in types {
        let _ = writeln!(out, "    g.subschema_for::<{t}>();");
    }
    out.push_str("}\n");
    out
}
