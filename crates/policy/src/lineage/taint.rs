//! What values derive from (rule sets, taint, shapes) and what a statement returns.

use std::rc::Rc;

use sqlparser::ast::TableAlias;

use super::*;

/// The masking rules some value derives from: a bit per rule index below 64, and the
/// smallest index above (policies with that many masking rules are rare; a value tainted by
/// one is never written anywhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct RuleSet {
    pub(super) low: u64,
    pub(super) high: Option<usize>,
}

impl RuleSet {
    pub(super) fn one(i: RuleIndex) -> Self {
        let mut s = Self::default();
        s.add(i);
        s
    }

    pub(super) fn add(&mut self, i: RuleIndex) {
        if i < 64 {
            self.low |= 1 << i;
        } else {
            self.high = Some(self.high.map_or(i, |h| h.min(i)));
        }
    }

    pub(super) fn union(&mut self, other: RuleSet) {
        self.low |= other.low;
        if let Some(h) = other.high {
            self.add(h);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.low == 0 && self.high.is_none()
    }

    /// The first rule by index: the one that masks a column deriving from several.
    pub(super) fn first(&self) -> Option<RuleIndex> {
        if self.low != 0 {
            Some(self.low.trailing_zeros() as usize)
        } else {
            self.high
        }
    }

    /// The first rule in both sets (indices from 64 up fail closed: any two such meet).
    pub(super) fn first_common(&self, other: &RuleSet) -> Option<RuleIndex> {
        let low = self.low & other.low;
        if low != 0 {
            return Some(low.trailing_zeros() as usize);
        }
        self.high.filter(|_| other.high.is_some())
    }

    /// The first rule other than `allowed` (a value may be written where `allowed` masks it).
    pub(super) fn first_except(&self, allowed: Option<RuleIndex>) -> Option<RuleIndex> {
        let mut rest = *self;
        if let Some(a) = allowed.filter(|a| *a < 64) {
            rest.low &= !(1 << a);
        }
        if rest.low != 0 {
            return Some(rest.low.trailing_zeros() as usize);
        }
        // Indices from 64 up are summarised by their minimum, which cannot show that the
        // value derives from that rule alone: never allowed (fails closed).
        rest.high
    }
}

/// What one value derives from, as far as masking goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Taint {
    /// Rules covering the base columns it derives from.
    pub(super) rules: RuleSet,
    /// Why part of its lineage could not be traced, if so.
    pub(super) unknown: Option<Rc<str>>,
}

impl Taint {
    pub(super) fn rule(i: RuleIndex) -> Self {
        Self {
            rules: RuleSet::one(i),
            unknown: None,
        }
    }

    pub(super) fn unknown(why: impl Into<Rc<str>>) -> Self {
        Self {
            rules: RuleSet::default(),
            unknown: Some(why.into()),
        }
    }

    pub(super) fn union(&mut self, other: &Taint) {
        self.rules.union(other.rules);
        if self.unknown.is_none() {
            self.unknown.clone_from(&other.unknown);
        }
    }

    pub(super) fn is_clean(&self) -> bool {
        self.rules.is_empty() && self.unknown.is_none()
    }
}

/// One output column of a query or FROM item.
#[derive(Debug, Clone)]
pub(super) struct Col {
    pub(super) name: Rc<str>,
    pub(super) taint: Taint,
}

/// The columns of a query or FROM item: listed, or not known one by one (a set-returning
/// function of unknown shape, `*` over such a thing), with the union of what they derive from.
#[derive(Debug, Clone)]
pub(super) enum Shape {
    Known(Vec<Col>),
    Opaque(Taint),
}

impl Shape {
    pub(super) fn whole(&self) -> Taint {
        match self {
            Shape::Known(cols) => {
                let mut t = Taint::default();
                for c in cols {
                    t.union(&c.taint);
                }
                t
            }
            Shape::Opaque(t) => t.clone(),
        }
    }

    /// `AS alias(a, b, ...)`: renames the leading columns.
    pub(super) fn renamed(self, alias: Option<&TableAlias>) -> Shape {
        let Some(alias) = alias.filter(|a| !a.columns.is_empty()) else {
            return self;
        };
        match self {
            Shape::Known(mut cols) => {
                if alias.columns.len() > cols.len() {
                    let mut t = Shape::Known(cols).whole();
                    t.union(&Taint::unknown(
                        "a column alias list longer than its relation",
                    ));
                    return Shape::Opaque(t);
                }
                for (c, a) in cols.iter_mut().zip(&alias.columns) {
                    c.name = fold(&a.name);
                }
                Shape::Known(cols)
            }
            opaque => opaque,
        }
    }
}

/// Why a statement text is denied.
#[derive(Debug)]
pub(super) struct Denied {
    pub(super) rule: RuleId,
    pub(super) message: String,
}

impl Denied {
    pub(super) fn lineage(message: String) -> Self {
        Self {
            rule: RuleId::new(LINEAGE_RULE),
            message,
        }
    }

    pub(super) fn into_plan(self) -> MaskPlan {
        MaskPlan::Deny {
            rule: self.rule,
            message: self.message,
        }
    }
}

pub(super) type R<T> = Result<T, Denied>;

/// What one statement returns, before it is checked and turned into a [`ResultPlan`].
pub(super) enum Plan {
    NoRows,
    Rows(Shape),
    Declare { cursor: Rc<str>, rows: Shape },
    Prepare { name: Rc<str>, rows: Option<Shape> },
    Fetch(Rc<str>),
    Execute(Rc<str>),
}

impl Plan {
    /// Nothing masked and nothing that refers to masks decided elsewhere.
    pub(super) fn is_clear(&self, sensitive: bool) -> bool {
        let clean = |s: &Shape| match s {
            Shape::Known(cols) => cols
                .iter()
                .all(|c| c.taint.rules.is_empty() && (c.taint.unknown.is_none() || !sensitive)),
            Shape::Opaque(t) => t.rules.is_empty() && (t.unknown.is_none() || !sensitive),
        };
        match self {
            Plan::NoRows => true,
            Plan::Rows(s) => clean(s),
            // The data plane needs these to register the cursor or statement.
            Plan::Declare { .. } | Plan::Prepare { .. } => false,
            Plan::Fetch(_) | Plan::Execute(_) => false,
        }
    }

    pub(super) fn finish(self, policy: &Policy, sensitive: bool, n: usize) -> R<ResultPlan> {
        let mask = |s: Shape| -> R<ResultMask> {
            match s {
                Shape::Known(cols) => {
                    let mut out = Vec::with_capacity(cols.len());
                    for c in cols {
                        if let (Some(why), true) = (&c.taint.unknown, sensitive) {
                            return Err(Denied::lineage(format!(
                                "result column \"{}\" of statement {n} reads masked data and its origin could not be traced: {why}",
                                c.name
                            )));
                        }
                        out.push(c.taint.rules.first());
                    }
                    Ok(ResultMask { columns: out })
                }
                Shape::Opaque(t) => {
                    let why = match (t.rules.first(), &t.unknown) {
                        (Some(r), _) => format!(
                            "it returns values masked by {}",
                            policy
                                .masking()
                                .get(r)
                                .map_or(LINEAGE_RULE, |m| m.id.as_str())
                        ),
                        (None, Some(u)) => u.to_string(),
                        (None, None) => "its columns are not known".to_owned(),
                    };
                    Err(Denied::lineage(format!(
                        "the result columns of statement {n} cannot be listed one by one ({why})"
                    )))
                }
            }
        };
        Ok(match self {
            Plan::NoRows => ResultPlan::NoRows,
            Plan::Rows(s) => ResultPlan::Rows(mask(s)?),
            Plan::Declare { cursor, rows } => ResultPlan::Declare {
                cursor: (*cursor).into(),
                rows: mask(rows)?,
            },
            Plan::Prepare { name, rows } => ResultPlan::Prepare {
                name: (*name).into(),
                rows: rows.map(mask).transpose()?,
            },
            Plan::Fetch(c) => ResultPlan::Fetch {
                cursor: (*c).into(),
            },
            Plan::Execute(n) => ResultPlan::Execute { name: (*n).into() },
        })
    }
}
