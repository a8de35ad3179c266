//! etcdctl's transaction syntax, read from stdin (or typed interactively with `-i`):
//! comparisons, a blank line, the operations run on success, a blank line, the operations
//! run on failure, a blank line.
//!
//! ```text
//! mod("key1") > "0"
//! value("key2") = "v"
//!
//! put key1 "new value"
//! get key2
//!
//! del key1
//! ```
//!
//! Comparisons: `value|val`, `version|ver`, `create|c`, `mod|m`, `lease` of a quoted key,
//! then `=`, `!=`, `>` or `<`, then a quoted value (a number for revisions and versions, a
//! hex ID for leases). Operations are written exactly like the `get`, `put` and `del`
//! commands, with the same flags.

use crate::{BadArgs, DelArgs, GetArgs, PutArgs};
use cairn_sdk::{Compare, CompareOp, Txn, TxnOp};
use clap::Parser;
use std::io::{BufRead, Write};

#[derive(Parser)]
#[command(no_binary_name = true)]
enum OpLine {
    Get(GetArgs),
    Put(PutArgs),
    Del(DelArgs),
}

/// Read a transaction from `input`; with `interactive`, prompt for each section.
pub fn read(input: impl BufRead, interactive: bool) -> anyhow::Result<Txn> {
    let mut lines = input.lines();
    let mut section = |prompt: &str| -> anyhow::Result<Vec<String>> {
        if interactive {
            println!("{prompt}");
            std::io::stdout().flush()?;
        }
        let mut out = Vec::new();
        for line in lines.by_ref() {
            let line = line?;
            if line.trim().is_empty() {
                break;
            }
            out.push(line);
        }
        Ok(out)
    };
    let compares = section("compares:")?;
    let success = section("success requests (get, put, del):")?;
    let failure = section("failure requests (get, put, del):")?;
    let compares = compares.iter().map(|l| compare(l)).collect::<anyhow::Result<Vec<_>>>()?;
    let success = success.iter().map(|l| op(l)).collect::<anyhow::Result<Vec<_>>>()?;
    let failure = failure.iter().map(|l| op(l)).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Txn::new().when(compares).and_then(success).or_else(failure))
}

fn bad(line: &str, why: &str) -> anyhow::Error {
    BadArgs(format!("malformed comparison {line:?}: {why}")).into()
}

/// A quoted (or bare) string at the start of `s`; returns it and the rest.
fn quoted(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    if let Some(body) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?.1),
                '"' => return Some((out, &body[i + 1..])),
                c => out.push(c),
            }
        }
        None
    } else {
        let end = s.find([')', ' ']).unwrap_or(s.len());
        Some((s[..end].to_string(), &s[end..]))
    }
}

fn compare(line: &str) -> anyhow::Result<Compare> {
    let open = line.find('(').ok_or_else(|| bad(line, "expected target(\"key\")"))?;
    let target = line[..open].trim().to_ascii_lowercase();
    let (key, rest) = quoted(&line[open + 1..]).ok_or_else(|| bad(line, "unterminated key"))?;
    let rest = rest.trim_start().strip_prefix(')').ok_or_else(|| bad(line, "expected ')' after the key"))?.trim_start();
    let (op, rest) = if let Some(r) = rest.strip_prefix("!=") {
        (CompareOp::NotEqual, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (CompareOp::Equal, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (CompareOp::Greater, r)
    } else if let Some(r) = rest.strip_prefix('<') {
        (CompareOp::Less, r)
    } else {
        return Err(bad(line, "expected =, !=, > or <"));
    };
    let (value, tail) = quoted(rest).ok_or_else(|| bad(line, "unterminated value"))?;
    if !tail.trim().is_empty() {
        return Err(bad(line, "unexpected text after the value"));
    }
    let num = || value.parse::<i64>().map_err(|_| bad(line, "expected a number"));
    Ok(match target.as_str() {
        "value" | "val" => Compare::value(key, op, value),
        "version" | "ver" => Compare::version(key, op, num()?),
        "create" | "c" => Compare::create_revision(key, op, num()?),
        "mod" | "m" => Compare::mod_revision(key, op, num()?),
        "lease" => {
            Compare::lease(key, op, i64::from_str_radix(&value, 16).map_err(|_| bad(line, "expected a hex lease ID"))?)
        }
        _ => return Err(bad(line, "unknown target (value, version, create, mod, lease)")),
    })
}

fn op(line: &str) -> anyhow::Result<TxnOp> {
    let words =
        shlex::split(line).ok_or_else(|| BadArgs(format!("malformed operation {line:?}: unbalanced quotes")))?;
    let parsed =
        OpLine::try_parse_from(words).map_err(|e| BadArgs(format!("malformed operation {line:?}: {}", e.kind())))?;
    Ok(match parsed {
        OpLine::Get(a) => {
            let (key, opts) = a.options()?;
            TxnOp::get(key, opts)
        }
        OpLine::Put(a) => {
            let (key, value, opts) = a.options()?;
            TxnOp::put(key, value.ok_or_else(|| BadArgs("put in a transaction needs a value".into()))?, opts)
        }
        OpLine::Del(a) => {
            let (key, opts) = a.options()?;
            TxnOp::delete(key, opts)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcdctl_syntax() {
        let input = "mod(\"k1\") > \"0\"\nval(\"k 2\") != \"a \\\"b\\\"\"\nlease(\"k3\") = \"694d71f1c8f8d00b\"\n\nput k1 \"v 1\" --prev-kv\nget k --prefix\n\ndel k1\n\n";
        let txn = read(input.as_bytes(), false).expect("parses");
        let want = Txn::new()
            .when([
                Compare::mod_revision("k1", CompareOp::Greater, 0),
                Compare::value("k 2", CompareOp::NotEqual, "a \"b\""),
                Compare::lease("k3", CompareOp::Equal, 0x694d71f1c8f8d00b),
            ])
            .and_then([
                TxnOp::put("k1", "v 1", cairn_sdk::PutOptions::new().with_prev_kv()),
                TxnOp::get("k", cairn_sdk::GetOptions::new().with_prefix()),
            ])
            .or_else([TxnOp::delete("k1", None)]);
        assert_eq!(txn, want);
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in
            ["mod(\"k\" > \"1\"\n\n\n", "ver(\"k\") ~ \"1\"\n\n\n", "foo(\"k\") = \"1\"\n\n\n", "\nfrobnicate k\n\n"]
        {
            let e = read(bad.as_bytes(), false).expect_err(bad);
            assert!(e.downcast_ref::<BadArgs>().is_some(), "{bad}: {e}");
        }
    }
}
