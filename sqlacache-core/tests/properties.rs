//! Properties of the analyzer over generated SQL: a write is never a cacheable read, and the
//! tables a statement is said to write always include the tables it writes.

use proptest::prelude::*;
use sqlacache_core::analyze::{analyze, mentions_clock_bytes, Effect, Reach, RowSource, Uncached};

fn table() -> impl Strategy<Value = String> {
    "t_[a-z]{1,6}".prop_map(|s| s)
}

fn column() -> impl Strategy<Value = String> {
    "c_[a-z]{1,4}".prop_map(|s| s)
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0i64..1000).prop_map(|n| n.to_string()),
        (1u8..9).prop_map(|n| format!("${n}")),
        "[a-z ()*,]{0,8}".prop_map(|s| format!("'{s}'")),
        Just("NULL".to_owned()),
    ]
}

fn predicate() -> impl Strategy<Value = String> {
    (column(), value(), value(), table()).prop_flat_map(|(c, v, w, t)| {
        prop_oneof![
            Just(format!("{c} = {v}")),
            Just(format!("{c} IN ({v}, {w})")),
            Just(format!("{c} = ANY({v})")),
            Just(format!("{c} > {v} AND {c} < {w}")),
            Just(format!("{c} IN (SELECT {c} FROM {t} WHERE {c} = {w})")),
            Just(format!("{c} IS NOT NULL OR {c} LIKE 'count(%'")),
        ]
    })
}

/// A write statement and the table it writes.
fn write() -> impl Strategy<Value = (String, String)> {
    (table(), column(), value(), predicate(), any::<bool>()).prop_flat_map(|(t, c, v, p, flag)| {
        let returning = if flag { format!(" RETURNING {c}") } else { String::new() };
        prop_oneof![
            Just((format!("UPDATE {t} SET {c} = {v} WHERE {p}{returning}"), t.clone())),
            Just((format!("DELETE FROM {t} WHERE {p}{returning}"), t.clone())),
            Just((format!("INSERT INTO {t} ({c}) VALUES ({v}){returning}"), t.clone())),
            Just((
                format!(
                    "INSERT INTO {t} ({c}) VALUES ({v}) ON CONFLICT ({c}) DO UPDATE SET {c} = excluded.{c}{returning}"
                ),
                t.clone()
            )),
            Just((format!("INSERT INTO {t} ({c}) SELECT {c} FROM {t} WHERE {p}"), t.clone())),
            Just((format!("WITH w AS (DELETE FROM {t} WHERE {p} RETURNING {c}) SELECT count(*) FROM w"), t.clone())),
            Just((format!("WITH w AS (UPDATE {t} SET {c} = {v} RETURNING *) SELECT * FROM w"), t.clone())),
            Just((format!("SELECT * FROM {t} WHERE {p}; UPDATE {t} SET {c} = {v}"), t.clone())),
            Just((format!("TRUNCATE {t}"), t.clone())),
            Just((format!("update {t} set {c} = {v} where {p};  -- trailing comment"), t.clone())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn a_write_is_never_a_cacheable_read((sql, _) in write()) {
        let analysis = analyze(&sql);
        prop_assert!(analysis.read.is_err(), "{sql} was classified as a cacheable read");
        prop_assert!(analysis.effect != Effect::None, "{sql} was said to change nothing");
    }

    #[test]
    fn written_tables_are_always_reported((sql, target) in write()) {
        match analyze(&sql).effect {
            Effect::Everything { .. } => {}
            Effect::Writes(writes) => prop_assert!(
                writes.iter().any(|w| w.table.name == target),
                "{sql}: writes {:?} miss {target}", writes.iter().map(|w| &w.table.name).collect::<Vec<_>>()
            ),
            Effect::None => prop_assert!(false, "{sql}: no effect"),
        }
    }

    #[test]
    fn reads_list_every_table_they_name(a in table(), b in table(), c in column(), p in predicate()) {
        let sql = format!("SELECT x.* FROM {a} x JOIN {b} y ON x.{c} = y.{c} WHERE {p}");
        let read = analyze(&sql).read;
        if let Ok(read) = read {
            for t in [&a, &b] {
                prop_assert!(read.tables.iter().any(|r| &r.name == t), "{sql}: {t} missing from {:?}", read.tables);
            }
        }
    }

    #[test]
    fn session_changes_are_never_missed(name in "[a-z_]{1,10}", v in value(), body in predicate(), t in table()) {
        for sql in [
            format!("SET {name} = {v}"),
            format!("SET SESSION {name} TO {v}"),
            format!("RESET {name}"),
            format!("SELECT set_config('{name}', 'x', false) FROM {t} WHERE {body}"),
            format!("BEGIN; SELECT * FROM {t} WHERE {body}"),
        ] {
            let analysis = analyze(&sql);
            prop_assert!(analysis.reach.session || analysis.statements == 0, "{sql} was not seen to change the session");
            prop_assert!(analysis.read.is_err(), "{sql} was classified as a cacheable read");
        }
        for sql in [format!("SET LOCAL {name} = {v}"), format!("SELECT * FROM {t} WHERE {body}")] {
            prop_assert!(!analyze(&sql).reach.session, "{sql} was said to change the session");
        }
    }

    #[test]
    fn locks_and_clock_words_are_never_cacheable(
        t in table(),
        p in predicate(),
        lock in prop_oneof![Just("UPDATE"), Just("NO KEY UPDATE"), Just("SHARE"), Just("KEY SHARE")],
        word in prop_oneof![Just("now"), Just("NOW"), Just("today"), Just(" tomorrow"), Just("yesterday ")],
        quote in prop_oneof![Just(("'", "'")), Just(("E'", "'")), Just(("$$", "$$")), Just(("$q$", "$q$"))],
    ) {
        let locked = format!("SELECT * FROM {t} WHERE {p} FOR {lock}");
        let analysis = analyze(&locked);
        if analysis.statements > 0 {
            prop_assert_eq!(analysis.read.clone().err(), Some(Uncached::Locking), "{}", locked);
            prop_assert_eq!(analysis.effect, Effect::None, "{}: a lock writes nothing", locked);
        }
        let clock = format!("SELECT * FROM {t} WHERE {p} AND created < {}{word}{}::timestamptz", quote.0, quote.1);
        prop_assert!(analyze(&clock).read.is_err(), "{clock} was classified as a cacheable read");
    }

    #[test]
    fn table_statements_are_dependencies(a in table(), b in table(), c in column()) {
        for sql in [format!("SELECT {c} FROM {a} UNION TABLE {b}"), format!("SELECT * FROM {a} WHERE {c} IN (TABLE {b})")] {
            if let Ok(read) = analyze(&sql).read {
                prop_assert!(read.tables.iter().any(|r| r.name == b), "{sql}: {b} missing from {:?}", read.tables);
            }
        }
    }

    #[test]
    fn returning_of_another_instance_is_never_the_target_key(t in table(), c in column(), v in value(), alias in "a_[a-z]{1,3}") {
        // The alias never equals the table's name (`t_..`), as PostgreSQL requires.
        let sql = format!("UPDATE {t} AS {alias} SET {c} = {v} FROM {t} WHERE {alias}.{c} = {t}.{c} RETURNING {t}.{c}");
        if let Effect::Writes(writes) = analyze(&sql).effect {
            match &writes[0].rows {
                RowSource::Returning { items, .. } => {
                    prop_assert!(items.iter().all(|(_, source)| source.is_none()), "{sql}: {items:?}");
                }
                other => prop_assert!(matches!(other, RowSource::Unknown), "{sql}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_string_that_does_not_parse_may_do_anything(prefix in "[A-Za-z ]{0,12}", t in table(), p in predicate()) {
        // A valid statement the parser may not know, or garbage: when it does not parse, it is
        // assumed to write everything, change the session and begin, end or commit a transaction.
        for sql in [
            format!("{prefix} UPDATE {t} SET c = 1 WHERE {p}"),
            format!("BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE; {prefix}"),
            format!("SET SCHEMA '{t}'; {prefix}"),
            format!("DO $$ BEGIN PERFORM {prefix}; END $$"),
        ] {
            let analysis = analyze(&sql);
            if analysis.statements == 0 {
                prop_assert_eq!(analysis.effect.clone(), Effect::Everything { parsed: false }, "{}", sql);
                let reach = Reach { new_sessions: analysis.reach.new_sessions, ..Reach::unknown() };
                prop_assert_eq!(analysis.reach, reach, "{}", sql);
                prop_assert!(analysis.read.is_err(), "{} was classified as a cacheable read", sql);
            }
        }
    }

    #[test]
    fn attribute_notation_is_left_to_postgres(t in table(), c in column(), f in "f_[a-z]{1,5}") {
        // `x.f` may be a column or a call of f(x): the analyzer cannot tell, and never judges
        // it harmless by itself (the plan asks PostgreSQL); it still lists the table.
        for sql in [format!("SELECT x.{f} FROM {t} x WHERE x.{c} = 1"), format!("SELECT ({t}).{f} FROM {t}")] {
            if let Ok(read) = analyze(&sql).read {
                prop_assert!(read.tables.iter().any(|r| r.name == t), "{sql}: {t} missing");
            }
        }
    }

    #[test]
    fn only_ascii_letters_fold(head in "[A-Za-z]{0,3}", accent in "[ÀÄÉÖÜàäéöü]", tail in "[A-Za-z]{0,3}") {
        let name = format!("{head}{accent}{tail}");
        let sql = format!("SELECT * FROM {name}");
        if let Ok(read) = analyze(&sql).read {
            prop_assert_eq!(&read.tables[0].name, &format!("{}{accent}{}", head.to_ascii_lowercase(), tail.to_ascii_lowercase()));
        }
        let quoted = format!("SELECT * FROM \"{name}\"");
        if let Ok(read) = analyze(&quoted).read {
            prop_assert_eq!(&read.tables[0].name, &name);
        }
    }

    #[test]
    fn a_clock_word_in_a_serialized_string_is_always_seen(
        word in prop_oneof![Just("now"), Just("Today"), Just("TOMORROW"), Just("yesterday")],
        before in "[ ,.:0-9-]{0,3}",
        pad in 0usize..300,
    ) {
        let text = format!("{before}{word}{}", " ".repeat(pad));
        let bytes = postcard::to_allocvec(&text).unwrap();
        prop_assert!(mentions_clock_bytes(&bytes), "{text:?} as {bytes:?}");
        let pair = postcard::to_allocvec(&(7_i64, text.as_str(), "x")).unwrap();
        prop_assert!(mentions_clock_bytes(&pair), "{text:?} in a tuple");
    }

    #[test]
    fn analysis_never_panics(sql in "\\PC{0,120}") {
        let _ = analyze(&sql);
    }
}
