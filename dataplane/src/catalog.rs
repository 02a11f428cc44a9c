//! The backend database's relations and columns, for masking: which table and column a
//! RowDescription field comes from, and what a statement's names resolve to.
//!
//! User-defined functions (`pg_proc` beyond PostgreSQL's own) are loaded too, so the
//! lineage can trace what their results derive from.
//!
//! One [`PgCatalog`] per connection per core (in the core's [`Catalogs`]), loaded on first need over a dedicated short-lived
//! server connection (never a pooled one, so a session-mode client holding the last pooled
//! connection cannot deadlock its own load), and shared by every session of that connection on
//! the core. Concurrent needs on one core share one load. A catalog is reloaded:
//! - after DDL passes through the gateway on this core (a CommandComplete tag starting with
//!   `CREATE`, `ALTER` or `DROP` marks it stale; the next statement that needs it waits for
//!   the new one);
//! - when it is older than [`MAX_AGE`] (DDL that did not pass through this core);
//! - when a statement names a relation the catalog does not know (at most once per
//!   [`RELOAD_BACKOFF`]; the statement is otherwise denied, failing closed);
//! - at once when a RowDescription names a relation, attribute or type the catalog does not
//!   know (DDL done elsewhere: a table dropped and recreated has a new OID). The session holds that result until [`Catalogs::refresh`] answers
//!   (one load in flight per core and connection, at most one forced load per
//!   [`RELOAD_INTERVAL`]) and plans it with the new catalog;
//! - when its fingerprint changed: a catalog not checked for [`PROBE_INTERVAL`] is checked
//!   before its next use by one cheap query ([`FINGERPRINT_SQL`]: counts and the sum of the
//!   row versions of pg_class, pg_attribute, pg_type and pg_proc), which notices renames
//!   and column renames done elsewhere, whose results carry OIDs the catalog still knows.
//!
//! Mask plans ([`sluice_policy::lineage::mask_plan`]) depend on the catalog, so they are cached
//! with it, by policy and statement text, and dropped with it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{FutureExt, LocalBoxFuture, Shared};
use sluice_policy::lineage::{Catalog, Column, Function, MaskPlan, RelKind, Relation};

use crate::backend::{ServerConn, Target};
use crate::error::BackendError;

/// A catalog older than this is reloaded before its next use.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Least time between two reloads caused by unknown relations.
pub const RELOAD_BACKOFF: Duration = Duration::from_secs(1);
/// Least time between a catalog's load and a reload forced by a result it cannot resolve
/// (a later ask waits for the rest of it, so a storm of unknown OIDs costs one load each).
pub const RELOAD_INTERVAL: Duration = Duration::from_millis(200);
/// How long a catalog is used without checking its fingerprint.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Most relation columns (and types) a catalog loads; beyond that the load fails and masked
/// statements are denied rather than judged on a partial catalog.
const MAX_CATALOG_ROWS: usize = 1_000_000;
/// Longest statement text whose mask plan is cached (as the verdict cache does).
const MAX_CACHED_TEXT: usize = 8 * 1024;
/// Most mask plans cached per catalog (the cache is cleared when full).
const MAX_PLANS: usize = 8 * 1024;

/// Relations, columns and view definitions; pg_catalog and information_schema left out (the
/// lineage treats them as holding no masked data).
const RELATIONS_SQL: &str = "SELECT c.oid::int8, n.nspname, c.relname, c.relkind, \
     CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END, \
     a.attnum, a.attname, a.atttypid::int8, t.typname \
     FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     LEFT JOIN pg_catalog.pg_attribute a \
       ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
     LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
       AND n.nspname <> 'information_schema' \
       AND (n.nspname NOT LIKE 'pg\\_%' OR n.nspname LIKE 'pg\\_temp\\_%') \
     ORDER BY c.oid, a.attnum";

const TYPES_SQL: &str = "SELECT oid::int8, typname FROM pg_catalog.pg_type";

/// User-defined functions (not PostgreSQL's own): the bodies of `sql` functions up to
/// [`MAX_TRACED_BODY`] bytes (a longer or other body is NULL: untraceable, never cut short),
/// and the relation whose row type a function returns.
const FUNCTIONS_SQL: &str = "SELECT p.oid::int8, n.nspname, p.proname, l.lanname, \
     CASE WHEN l.lanname = 'sql' AND octet_length(p.prosrc) <= 262144 THEN p.prosrc END, \
     p.prorettype::int8, p.proretset::text, coalesce(t.typrelid, 0)::int8, p.proargtypes::text \
     FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
     LEFT JOIN pg_catalog.pg_type t ON t.oid = p.prorettype \
     WHERE p.oid >= 16384 OR n.nspname NOT IN ('pg_catalog', 'information_schema') \
     ORDER BY p.oid";
/// Longest `sql` function body loaded (as [`FUNCTIONS_SQL`] says).
const MAX_TRACED_BODY: usize = 262_144;

/// What changes whenever a relation, column, type or function is created, dropped, renamed
/// or altered: each of those rewrites a row of these catalogs, and a new row version has a
/// new `xmin`. Statistics updates are done in place and leave it alone.
pub const FINGERPRINT_SQL: &str = "SELECT \
     (SELECT count(*) || ':' || coalesce(sum(xmin::text::int8), 0) FROM pg_catalog.pg_class) || '/' || \
     (SELECT count(*) || ':' || coalesce(sum(xmin::text::int8), 0) FROM pg_catalog.pg_attribute) || '/' || \
     (SELECT count(*) || ':' || coalesce(sum(xmin::text::int8), 0) FROM pg_catalog.pg_type) || '/' || \
     (SELECT count(*) || ':' || coalesce(sum(xmin::text::int8), 0) FROM pg_catalog.pg_proc)";

/// One backend database's relations, by OID and by name.
#[derive(Debug, Default)]
pub struct PgCatalog {
    by_oid: HashMap<u32, Relation>,
    by_name: HashMap<Box<str>, HashMap<Box<str>, u32>>,
    types: HashMap<u32, Box<str>>,
    /// User-defined functions by name.
    functions: HashMap<Box<str>, Vec<Function>>,
    /// [`FINGERPRINT_SQL`]'s answer when this was loaded.
    fingerprint: Option<Box<str>>,
}

/// OIDs below this are PostgreSQL's own objects (`FirstNormalObjectId`).
pub const FIRST_NORMAL_OID: u32 = 16384;

impl Catalog for PgCatalog {
    fn relation(&self, schema: &str, name: &str) -> Option<&Relation> {
        let oid = self.by_name.get(schema)?.get(name)?;
        self.by_oid.get(oid)
    }

    fn by_oid(&self, oid: u32) -> Option<&Relation> {
        self.by_oid.get(&oid)
    }

    fn type_name(&self, oid: u32) -> Option<&str> {
        self.types.get(&oid).map(|t| &**t)
    }

    fn functions(&self, name: &str) -> &[Function] {
        self.functions.get(name).map_or(&[], Vec::as_slice)
    }
}

impl PgCatalog {
    /// Builds a catalog from the rows of [`RELATIONS_SQL`] and [`TYPES_SQL`].
    fn from_rows(
        relations: Vec<Vec<Option<String>>>,
        types: Vec<Vec<Option<String>>>,
    ) -> Result<PgCatalog, String> {
        let mut cat = PgCatalog::default();
        for row in types {
            let [Some(oid), Some(name)] = row.as_slice() else {
                return Err("pg_type row with NULLs".into());
            };
            cat.types.insert(parse_oid(oid)?, name.as_str().into());
        }
        for row in relations {
            let [Some(oid), Some(schema), Some(name), Some(kind), view_sql, attnum, attname, typid, typname] =
                row.as_slice()
            else {
                return Err("pg_class row with unexpected NULLs or width".into());
            };
            let oid = parse_oid(oid)?;
            let rel = cat.by_oid.entry(oid).or_insert_with(|| Relation {
                oid,
                schema: schema.as_str().into(),
                name: name.as_str().into(),
                kind: match kind.as_str() {
                    "r" | "p" => RelKind::Table,
                    "v" => RelKind::View,
                    "m" => RelKind::MaterializedView,
                    "f" => RelKind::Foreign,
                    _ => RelKind::Other,
                },
                columns: Vec::new(),
                view_sql: view_sql.as_deref().map(Into::into),
            });
            if let (Some(attnum), Some(attname), Some(typid)) = (attnum, attname, typid) {
                rel.columns.push(Column {
                    attnum: attnum
                        .parse()
                        .map_err(|_| format!("bad attnum {attnum:?}"))?,
                    name: attname.as_str().into(),
                    type_name: typname.as_deref().unwrap_or("").into(),
                    type_oid: parse_oid(typid)?,
                });
            }
        }
        for rel in cat.by_oid.values() {
            cat.by_name
                .entry(rel.schema.clone())
                .or_default()
                .insert(rel.name.clone(), rel.oid);
        }
        Ok(cat)
    }

    /// Adds the rows of [`FUNCTIONS_SQL`].
    fn add_functions(&mut self, rows: Vec<Vec<Option<String>>>) -> Result<(), String> {
        for row in rows {
            let [Some(oid), Some(schema), Some(name), Some(language), source, Some(ret), Some(set), Some(relid), Some(args)] =
                row.as_slice()
            else {
                return Err("pg_proc row with unexpected NULLs or width".into());
            };
            let relid = parse_oid(relid)?;
            let f = Function {
                oid: parse_oid(oid)?,
                schema: schema.as_str().into(),
                name: name.as_str().into(),
                arg_types: args
                    .split_whitespace()
                    .map(parse_oid)
                    .collect::<Result<_, _>>()?,
                language: language.as_str().into(),
                source: source
                    .as_deref()
                    .filter(|s| s.len() <= MAX_TRACED_BODY)
                    .unwrap_or("")
                    .into(),
                return_type: parse_oid(ret)?,
                returns_set: set == "true",
                return_relation: (relid != 0).then_some(relid),
            };
            self.functions.entry(f.name.clone()).or_default().push(f);
        }
        Ok(())
    }

    /// Loads the catalog over `conn`.
    pub async fn load(conn: &mut ServerConn) -> Result<PgCatalog, BackendError> {
        let fingerprint = fingerprint(conn).await?;
        let relations = conn.query_rows(RELATIONS_SQL, MAX_CATALOG_ROWS).await?;
        let types = conn.query_rows(TYPES_SQL, MAX_CATALOG_ROWS).await?;
        let functions = conn.query_rows(FUNCTIONS_SQL, MAX_CATALOG_ROWS).await?;
        let mut cat = PgCatalog::from_rows(relations, types)
            .and_then(|mut c| c.add_functions(functions).map(|()| c))
            .map_err(|message| BackendError::Refused {
                code: sluice_pgwire::sqlstate::INTERNAL_ERROR.into(),
                message: format!("unexpected catalog contents: {message}"),
            })?;
        // Read before the contents: a change in between makes the next probe reload.
        cat.fingerprint = fingerprint;
        Ok(cat)
    }

    /// Whether a RowDescription field's origin is unknown to this catalog: a relation OID or
    /// attribute it does not list, or a type it does not know. Any of these means the
    /// catalog is older than the backend's. (A column's type is not compared: a domain
    /// column is described with its base type.)
    pub fn misses(&self, table_oid: u32, attnum: i16, type_oid: u32) -> bool {
        if !self.types.contains_key(&type_oid) {
            return true;
        }
        if table_oid < FIRST_NORMAL_OID {
            return false;
        }
        let Some(rel) = self.by_oid.get(&table_oid) else {
            return true;
        };
        if attnum <= 0 {
            return false;
        }
        !rel.columns.iter().any(|c| c.attnum == attnum)
    }

    /// Number of relations known.
    pub fn len(&self) -> usize {
        self.by_oid.len()
    }

    /// Whether no relation is known.
    pub fn is_empty(&self) -> bool {
        self.by_oid.is_empty()
    }
}

/// The catalog's fingerprint ([`FINGERPRINT_SQL`]).
async fn fingerprint(conn: &mut ServerConn) -> Result<Option<Box<str>>, BackendError> {
    let rows = conn.query_rows(FINGERPRINT_SQL, 1).await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .map(Into::into))
}

fn parse_oid(s: &str) -> Result<u32, String> {
    s.parse().map_err(|_| format!("bad oid {s:?}"))
}

/// Mask plans of one policy by statement key.
type PlansByText = HashMap<Box<str>, Rc<MaskPlan>>;

/// A loaded catalog with its mask plans.
pub struct Loaded {
    /// The catalog.
    pub catalog: PgCatalog,
    /// When it was loaded.
    pub at: Instant,
    /// When its fingerprint was last found unchanged (or it was loaded).
    checked: Cell<Instant>,
    /// Mask plans by policy cache key, then statement key.
    plans: RefCell<HashMap<u64, PlansByText>>,
    /// RowDescription origins: (policy cache key, table OID, attnum) → masking rule.
    origins: RefCell<HashMap<(u64, u32, i16), Option<usize>>>,
}

impl Loaded {
    /// The mask plan of `sql` under `policy`, computed once per catalog and cached under
    /// `key` (the text itself, or its shape when constants cannot change the plan).
    pub fn plan(&self, policy: &sluice_policy::Policy, key: &str, sql: &str) -> Rc<MaskPlan> {
        let pk = policy.cache_key();
        if let Some(p) = self.plans.borrow().get(&pk).and_then(|m| m.get(key)) {
            return p.clone();
        }
        let plan = Rc::new(sluice_policy::lineage::mask_plan(
            policy,
            &self.catalog,
            sql,
        ));
        if key.len() > MAX_CACHED_TEXT {
            // Long texts are planned each time: the cache's memory stays bounded.
            return plan;
        }
        let mut plans = self.plans.borrow_mut();
        if plans.values().map(HashMap::len).sum::<usize>() >= MAX_PLANS {
            plans.clear();
        }
        plans
            .entry(pk)
            .or_default()
            .insert(key.into(), plan.clone());
        plan
    }

    /// The masking rule of a RowDescription field's origin (cached per catalog).
    pub fn origin_rule(
        &self,
        policy: &sluice_policy::Policy,
        table_oid: u32,
        attnum: i16,
    ) -> Option<usize> {
        let key = (policy.cache_key(), table_oid, attnum);
        if let Some(r) = self.origins.borrow().get(&key) {
            return *r;
        }
        let r = sluice_policy::lineage::origin_rule(policy, &self.catalog, table_oid, attnum);
        let mut origins = self.origins.borrow_mut();
        if origins.len() >= MAX_PLANS {
            origins.clear();
        }
        origins.insert(key, r);
        r
    }
}

type LoadResult = Result<Rc<Loaded>, Rc<str>>;

#[derive(Default)]
struct Entry {
    current: Option<Rc<Loaded>>,
    stale: bool,
    /// Counts [`Catalogs::mark_stale`] calls: a load that began before the latest one does
    /// not clear `stale`.
    epoch: u64,
    loading: Option<Shared<LocalBoxFuture<'static, LoadResult>>>,
}

impl Entry {
    /// The current catalog, if it may be used as it is.
    fn fresh(&self) -> Option<&Rc<Loaded>> {
        self.current.as_ref().filter(|c| {
            !self.stale && c.at.elapsed() < MAX_AGE && c.checked.get().elapsed() < PROBE_INTERVAL
        })
    }
}

/// One core's catalogs, by connection name (cores share nothing: each loads its own).
#[derive(Default)]
pub struct Catalogs {
    entries: RefCell<HashMap<Box<str>, Entry>>,
}

impl Catalogs {
    /// The catalog of `connection`, loading it (once, however many ask at the same time)
    /// when missing, stale or older than [`MAX_AGE`], and checking its fingerprint first
    /// when it was not checked for [`PROBE_INTERVAL`].
    pub async fn current(&self, connection: &str, target: &Target) -> LoadResult {
        let (pending, epoch) = {
            let mut map = self.entries.borrow_mut();
            // The hot path (a fresh catalog) allocates nothing.
            if let Some(cur) = map.get(connection).and_then(Entry::fresh) {
                return Ok(cur.clone());
            }
            let e = map.entry(connection.into()).or_default();
            if let Some(cur) = e.fresh() {
                return Ok(cur.clone());
            }
            let pending = match &e.loading {
                Some(l) => l.clone(),
                None => {
                    // A catalog that is only unchecked is probed; a stale or old one reloaded.
                    let previous = e
                        .current
                        .clone()
                        .filter(|c| !e.stale && c.at.elapsed() < MAX_AGE);
                    let fut = load(target.clone(), previous).boxed_local().shared();
                    e.loading = Some(fut.clone());
                    fut
                }
            };
            (pending, e.epoch)
        };
        let result = pending.await;
        let mut map = self.entries.borrow_mut();
        let e = map.entry(connection.into()).or_default();
        if e.loading.is_some() {
            e.loading = None;
            if let Ok(l) = &result {
                if e.current.as_ref().is_none_or(|c| c.at <= l.at) {
                    e.current = Some(l.clone());
                    // A DDL seen while this load ran may postdate what it read.
                    if e.epoch == epoch {
                        e.stale = false;
                    }
                }
            }
        }
        result
    }

    /// A catalog newer than `seen`, which could not resolve a result's origin: the one
    /// loaded since, or a new load (joined if one is in flight, and not before
    /// [`RELOAD_INTERVAL`] after `seen` was loaded).
    pub async fn refresh(
        &self,
        connection: &str,
        target: &Target,
        seen: &Rc<Loaded>,
    ) -> LoadResult {
        let newer = |this: &Self| {
            let map = this.entries.borrow();
            let e = map.get(connection)?;
            e.current
                .as_ref()
                .filter(|c| e.loading.is_none() && c.at > seen.at)
                .cloned()
        };
        if let Some(c) = newer(self) {
            return Ok(c);
        }
        let wait = RELOAD_INTERVAL.saturating_sub(seen.at.elapsed());
        if !wait.is_zero() {
            monoio::time::sleep(wait).await;
            if let Some(c) = newer(self) {
                return Ok(c);
            }
        }
        let joining = self
            .entries
            .borrow()
            .get(connection)
            .is_some_and(|e| e.loading.is_some());
        if !joining {
            self.mark_stale(connection);
        }
        self.current(connection, target).await
    }

    /// Marks `connection`'s catalog stale (DDL went through).
    pub fn mark_stale(&self, connection: &str) {
        if let Some(e) = self.entries.borrow_mut().get_mut(connection) {
            e.stale = true;
            e.epoch += 1;
        }
    }

    /// Marks the catalog stale if it is older than [`RELOAD_BACKOFF`] (a statement named a
    /// relation it does not know); returns whether it did.
    pub fn mark_stale_if_older(&self, connection: &str) -> bool {
        let mut map = self.entries.borrow_mut();
        let Some(e) = map.get_mut(connection) else {
            return false;
        };
        let old = e
            .current
            .as_ref()
            .is_some_and(|c| c.at.elapsed() >= RELOAD_BACKOFF);
        if old {
            e.stale = true;
            e.epoch += 1;
        }
        old
    }
}

/// Loads a catalog over a connection of its own; with `previous`, first checks whether its
/// fingerprint still holds and keeps it if so.
async fn load(target: Target, previous: Option<Rc<Loaded>>) -> LoadResult {
    let started = Instant::now();
    let result = async {
        let mut conn = ServerConn::connect(&target, 0).await?;
        if let Some(prev) = &previous {
            let now = fingerprint(&mut conn).await?;
            if now.is_some() && now == prev.catalog.fingerprint {
                prev.checked.set(Instant::now());
                return Ok(None);
            }
            tracing::debug!("the backend catalog changed; reloading");
        }
        let cat = PgCatalog::load(&mut conn).await;
        drop(conn);
        cat.map(Some)
    }
    .await;
    match (result, previous) {
        (Ok(None), Some(prev)) => Ok(prev),
        (Ok(Some(catalog)), _) => {
            tracing::debug!(
                relations = catalog.len(),
                ms = started.elapsed().as_millis() as u64,
                "catalog loaded"
            );
            let at = Instant::now();
            Ok(Rc::new(Loaded {
                catalog,
                at,
                checked: Cell::new(at),
                plans: RefCell::new(HashMap::new()),
                origins: RefCell::new(HashMap::new()),
            }))
        }
        (Ok(None), None) => Err(Rc::from("catalog load returned nothing")),
        (Err(e), Some(prev)) => {
            // The probe failed (the backend is away): keep what is known, and do not probe
            // again before the interval has passed.
            tracing::warn!(error = %e, "checking the backend catalog for masking failed");
            prev.checked.set(Instant::now());
            Ok(prev)
        }
        (Err(e), None) => {
            tracing::warn!(error = %e, "loading the backend catalog for masking failed");
            Err(Rc::<str>::from(e.to_string()))
        }
    }
}

/// Whether a CommandComplete tag reports DDL that may change relations or columns.
pub fn is_ddl_tag(tag: &str) -> bool {
    tag.starts_with("CREATE") || tag.starts_with("ALTER") || tag.starts_with("DROP")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|s| s.map(str::to_owned)).collect()
    }

    #[test]
    fn rows_become_relations_with_columns_in_order() {
        let rels = vec![
            row(&[
                Some("16384"),
                Some("app"),
                Some("customers"),
                Some("r"),
                None,
                Some("1"),
                Some("id"),
                Some("23"),
                Some("int4"),
            ]),
            row(&[
                Some("16384"),
                Some("app"),
                Some("customers"),
                Some("r"),
                None,
                Some("2"),
                Some("ssn"),
                Some("25"),
                Some("text"),
            ]),
            row(&[
                Some("16390"),
                Some("app"),
                Some("v"),
                Some("v"),
                Some(" SELECT customers.ssn FROM app.customers;"),
                Some("1"),
                Some("ssn"),
                Some("25"),
                Some("text"),
            ]),
            // A relation without columns.
            row(&[
                Some("16400"),
                Some("app"),
                Some("empty"),
                Some("r"),
                None,
                None,
                None,
                None,
                None,
            ]),
        ];
        let types = vec![row(&[Some("25"), Some("text")])];
        let cat = PgCatalog::from_rows(rels, types).unwrap();
        let c = cat.relation("app", "customers").unwrap();
        assert_eq!(c.oid, 16384);
        assert_eq!(c.kind, RelKind::Table);
        assert_eq!(
            c.columns.iter().map(|c| &*c.name).collect::<Vec<_>>(),
            ["id", "ssn"]
        );
        let v = cat.by_oid(16390).unwrap();
        assert_eq!(v.kind, RelKind::View);
        assert!(v.view_sql.as_deref().unwrap().contains("SELECT"));
        assert!(cat.relation("app", "empty").unwrap().columns.is_empty());
        assert!(
            cat.relation("App", "customers").is_none(),
            "names are exact"
        );
        assert_eq!(cat.type_name(25), Some("text"));
        assert_eq!(cat.len(), 3);
    }

    #[test]
    fn origins_a_catalog_does_not_list_are_misses() {
        let rels = vec![row(&[
            Some("16384"),
            Some("app"),
            Some("customers"),
            Some("r"),
            None,
            Some("1"),
            Some("id"),
            Some("23"),
            Some("int4"),
        ])];
        let types = vec![row(&[Some("23"), Some("int4")])];
        let cat = PgCatalog::from_rows(rels, types).unwrap();
        assert!(!cat.misses(16384, 1, 23));
        assert!(!cat.misses(0, 0, 23), "no table: an expression");
        assert!(!cat.misses(16384, -1, 23), "system columns");
        assert!(cat.misses(16999, 1, 23), "a relation created elsewhere");
        assert!(cat.misses(16384, 2, 23), "a column added elsewhere");
        assert!(cat.misses(0, 0, 17000), "a type created elsewhere");
        assert!(!cat.misses(1259, 1, 23), "system relations are not listed");
    }

    #[test]
    fn malformed_rows_are_errors_not_panics() {
        assert!(PgCatalog::from_rows(vec![row(&[Some("x")])], vec![]).is_err());
        assert!(PgCatalog::from_rows(
            vec![row(&[
                Some("oid"),
                Some("a"),
                Some("b"),
                Some("r"),
                None,
                None,
                None,
                None,
                None
            ])],
            vec![]
        )
        .is_err());
        assert!(PgCatalog::from_rows(vec![], vec![row(&[Some("1"), None])]).is_err());
    }

    #[test]
    fn function_rows_become_functions_by_name() {
        let mut cat = PgCatalog::default();
        cat.add_functions(vec![
            row(&[
                Some("16500"),
                Some("app"),
                Some("get_ssn"),
                Some("sql"),
                Some("SELECT ssn FROM customers WHERE id = $1"),
                Some("25"),
                Some("false"),
                Some("0"),
                Some("23"),
            ]),
            row(&[
                Some("16501"),
                Some("app"),
                Some("all_customers"),
                Some("plpgsql"),
                None,
                Some("16386"),
                Some("true"),
                Some("16384"),
                Some(""),
            ]),
        ])
        .unwrap();
        let f = &cat.functions("get_ssn")[0];
        assert_eq!(
            (f.oid, &*f.language, f.arg_types.as_slice()),
            (16500, "sql", &[23][..])
        );
        assert!(f.source.contains("ssn") && !f.returns_set && f.return_relation.is_none());
        let g = &cat.functions("all_customers")[0];
        assert!(g.source.is_empty() && g.returns_set);
        assert_eq!(g.return_relation, Some(16384));
        assert!(cat.functions("upper").is_empty());
        assert!(cat.add_functions(vec![row(&[Some("1")])]).is_err());
    }

    #[test]
    fn ddl_tags() {
        assert!(is_ddl_tag("CREATE TABLE"));
        assert!(is_ddl_tag("ALTER TABLE"));
        assert!(is_ddl_tag("DROP VIEW"));
        assert!(!is_ddl_tag("SELECT 1"));
        assert!(!is_ddl_tag("INSERT 0 1"));
    }
}
