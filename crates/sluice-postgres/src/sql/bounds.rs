//! Whether a write is bounded: does a predicate limit the rows it touches?
//!
//! `no_where` must mean "no predicate that bounds the rows", not "no WHERE
//! keyword": `where true`, `where 1 = 1`, `where id = id`, `where x or true`
//! and `where not false` write every row. Recognising always-true predicates
//! by example is a list an attacker walks around, so the rule is structural
//! and conservative (an unrecognised shape does not bound):
//!
//! A predicate bounds the target's rows only if
//! - a conjunct of it bounds (`AND`: one bounding conjunct is enough), and
//!   every disjunct of an `OR` bounds; `NOT` is pushed down (De Morgan), so
//!   `not (a or b)` bounds when `not a` or `not b` does;
//! - a comparison (`=`, `<`, `LIKE`, `IN`, `BETWEEN`, `= ANY`, `IS DISTINCT
//!   FROM`, `IN (subquery)`, any operator) bounds when one side references a
//!   column of the target and the other side does not reference that same
//!   column, and neither side is itself a boolean expression (`(id = id) =
//!   true` does not bound);
//! - `col IS NULL` on a column of the target bounds; `IS NOT NULL` does not
//!   (on a NOT NULL column it is every row);
//! - a bare boolean column of the target (`where expired`) or a function of
//!   target columns with no boolean expression inside (`where
//!   starts_with(name, 'x')`) bounds;
//! - `EXISTS (subquery)` bounds when the subquery is correlated with the
//!   target through a bounding comparison (`exists (select 1 from o where
//!   o.uid = t.id)`);
//! - `WHERE CURRENT OF cursor` bounds.
//! - A self-join (`UPDATE … FROM t`, `DELETE … USING t`, `MERGE … USING t`
//!   or an EXISTS subquery reading the target `t`) must also bound as a
//!   SELECT would, where `t.id = t2.id` joins the same column and bounds
//!   nothing.
//!
//! Constants, parameters (`where $1`), `CASE`, and anything else do not.
//!
//! Which column is "of the target": an unqualified name, or one qualified
//! with the target's alias (or its name when it has none). Inside a
//! subquery, an unqualified name is taken as the subquery's own column only
//! when the subquery reads plain tables; otherwise (`(select id)`, `(select
//! id from generate_series(1, 9))`) it may be the outer column and counts as
//! one. `IN`/`ANY` over a subquery that reads the target itself bounds only
//! if that subquery is bounded (`id in (select id from t)` is every row).
//!
//! Known limits (also in docs/guardrails.md): expressions are not
//! evaluated, so arithmetic or function identities (`id * 0 = 0`,
//! `abs(id) >= 0`), ranges that together cover every value (`id > 0`,
//! `id < 5 or id >= 5`) and predicates true of every row of the data at
//! hand are taken as bounding; an unqualified name in `UPDATE … FROM` /
//! `DELETE … USING` is taken as the target's; a subquery over a plain table
//! that lacks the column it names resolves it to the outer row, which only
//! the catalog knows; and a self-join is recognised by the target's own
//! name only (through a view of the target it is not seen).

use super::walk::{int_field, str_field, string_items, tagged, Obj};
use pg_query::protobuf::{
    AExprKind, BoolExprType, BoolTestType, NullTestType, SetOperation, SubLinkType,
};
use serde_json::Value;

/// The relation a write targets, as the predicate may name it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target<'a> {
    /// The alias if there is one, else the relation's name.
    Relation { relname: &'a str, refname: &'a str },
    /// Any column counts (the SELECT feeding an `INSERT … ON CONFLICT DO
    /// UPDATE`, whose rows all become updates).
    Any,
}

impl<'a> Target<'a> {
    /// The target named by an (untagged or tagged) RangeVar.
    pub(super) fn of(range_var: Option<&'a Value>) -> Target<'a> {
        let m = match range_var {
            Some(Value::Object(m)) if m.contains_key("relname") => m,
            Some(v) => match tagged(v) {
                Some(("RangeVar", m)) => m,
                _ => return Target::Any,
            },
            None => return Target::Any,
        };
        let relname = str_field(m, "relname");
        let alias = match m.get("alias") {
            Some(Value::Object(a)) => str_field(a, "aliasname"),
            _ => "",
        };
        Target::Relation {
            relname,
            refname: if alias.is_empty() { relname } else { alias },
        }
    }
}

/// A column reference: the qualifier's last part (empty when unqualified)
/// and the column name (`*` for `t.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Col {
    qualifier: String,
    name: String,
}

/// Whether `predicate` (a WHERE, ON or WHEN condition; `None` for none)
/// bounds the rows of `target`.
pub(super) fn bounds(predicate: Option<&Value>, target: Target<'_>) -> bool {
    match predicate {
        None | Some(Value::Null) => false,
        Some(p) => Bounds {
            target,
            qualified_only: false,
        }
        .pred(p, false),
    }
}

/// Whether a write whose other relations (`UPDATE … FROM`, `DELETE …
/// USING`, MERGE's source: `others`) may include the target itself is
/// bounded by `predicate`: a self-join (`delete from t using t t2 where t.id
/// = t2.id`) must also bound as a SELECT would, where `t.id = t2.id` is a
/// join on the same column and bounds nothing.
pub(super) fn bounds_write(
    predicate: Option<&Value>,
    target: Target<'_>,
    others: Option<&Value>,
) -> bool {
    if !bounds(predicate, target) {
        return false;
    }
    let b = Bounds {
        target,
        qualified_only: false,
    };
    !b.joins_whole_target(others) || bounds(predicate, Target::Any)
}

/// Whether a SELECT (the rows an INSERT adds) is bounded: VALUES, a
/// FROM-less SELECT without function calls, a LIMIT, or a bounding WHERE.
pub(super) fn select_bounded(select: Option<&Value>) -> bool {
    let s = match select {
        None | Some(Value::Null) => return true,
        Some(v) => match tagged(v) {
            Some(("SelectStmt", s)) => s,
            Some(_) => return false,
            None => match v {
                Value::Object(s) => s,
                _ => return false,
            },
        },
    };
    let op = SetOperation::try_from(int_field(s, "op")).unwrap_or(SetOperation::Undefined);
    if !matches!(op, SetOperation::SetopNone | SetOperation::Undefined) {
        return select_bounded(s.get("larg")) && select_bounded(s.get("rarg"));
    }
    if non_empty(s.get("values_lists")) {
        return true;
    }
    let limited = match s.get("limit_count").and_then(tagged) {
        None => false,
        Some(("AConst", c)) => c.get("isnull") != Some(&Value::Bool(true)),
        Some(_) => true,
    };
    if limited {
        return true;
    }
    if !non_empty(s.get("from_clause")) {
        // One row, unless a set-returning function makes more.
        let mut calls = false;
        visit_outside_sublinks(s.get("target_list"), &mut |tag, _| {
            calls |= tag == "FuncCall";
        });
        return !calls;
    }
    bounds(s.get("where_clause"), Target::Any)
}

struct Bounds<'a> {
    target: Target<'a>,
    /// Inside an EXISTS subquery: only names qualified with the target's
    /// name are its columns (unqualified ones are the subquery's).
    qualified_only: bool,
}

impl Bounds<'_> {
    /// Whether `p` (negated when `neg`) bounds the target's rows.
    fn pred(&self, p: &Value, neg: bool) -> bool {
        let Some((tag, b)) = tagged(p) else {
            return false;
        };
        match tag {
            "BoolExpr" => {
                let args: Vec<&Value> = match b.get("args") {
                    Some(Value::Array(a)) => a.iter().collect(),
                    _ => Vec::new(),
                };
                match BoolExprType::try_from(int_field(b, "boolop")) {
                    // A AND B bounds if either does; NOT (A AND B) = NOT A OR NOT B.
                    Ok(BoolExprType::AndExpr) if !neg => args.iter().any(|a| self.pred(a, neg)),
                    Ok(BoolExprType::OrExpr) if neg => args.iter().any(|a| self.pred(a, neg)),
                    Ok(BoolExprType::AndExpr | BoolExprType::OrExpr) => {
                        !args.is_empty() && args.iter().all(|a| self.pred(a, neg))
                    }
                    Ok(BoolExprType::NotExpr) => args.iter().any(|a| self.pred(a, !neg)),
                    _ => false,
                }
            }
            "AExpr" => match AExprKind::try_from(int_field(b, "kind")) {
                Ok(AExprKind::AexprNullif) | Err(_) => false,
                Ok(_) => self.comparison(b.get("lexpr"), b.get("rexpr")),
            },
            "NullTest" => {
                let is_null = NullTestType::try_from(int_field(b, "nulltesttype"))
                    == Ok(NullTestType::IsNull);
                is_null != neg
                    && b.get("arg")
                        .and_then(tagged)
                        .is_some_and(|(t, c)| t == "ColumnRef" && self.is_target(&col(c)))
            }
            "BooleanTest" => {
                let Some(arg) = b.get("arg") else {
                    return false;
                };
                match BoolTestType::try_from(int_field(b, "booltesttype")) {
                    Ok(BoolTestType::IsTrue | BoolTestType::IsNotFalse) => self.pred(arg, neg),
                    Ok(BoolTestType::IsFalse | BoolTestType::IsNotTrue) => self.pred(arg, !neg),
                    _ => false,
                }
            }
            "SubLink" => match SubLinkType::try_from(int_field(b, "sub_link_type")) {
                // Correlated with the target through a bounding comparison
                // (negation does not matter: NOT EXISTS is as bounded).
                Ok(SubLinkType::ExistsSublink) => {
                    let Some(("SelectStmt", s)) = b.get("subselect").and_then(tagged) else {
                        return false;
                    };
                    let Some(w) = s.get("where_clause") else {
                        return false;
                    };
                    let correlated = Bounds {
                        target: self.target,
                        qualified_only: matches!(self.target, Target::Relation { .. }),
                    }
                    .pred(w, false);
                    // `exists (select 1 from t t2 where t2.id = t.id)` on
                    // target t is every row: a self-join must bound itself.
                    let subselect = b.get("subselect");
                    correlated && (!self.reads_target(subselect) || select_bounded(subselect))
                }
                Ok(
                    SubLinkType::AnySublink
                    | SubLinkType::AllSublink
                    | SubLinkType::RowcompareSublink,
                ) => {
                    // `id in (select id from t)` on target t: every row.
                    let subselect = b.get("subselect");
                    if self.reads_target(subselect) && !select_bounded(subselect) {
                        return false;
                    }
                    // The subquery side, without the tested expression.
                    let subquery = serde_json::json!({"SubLink": {
                        "sub_link_type": SubLinkType::ExprSublink as i32,
                        "subselect": b.get("subselect").cloned().unwrap_or(Value::Null),
                    }});
                    self.comparison(b.get("testexpr"), Some(&subquery))
                }
                _ => false,
            },
            "CurrentOfExpr" => true,
            "ColumnRef" => self.is_target(&col(b)),
            "FuncCall" | "CoalesceExpr" | "MinMaxExpr" | "TypeCast" => {
                !has_boolean(Some(p)) && !self.direct_targets(Some(p)).is_empty()
            }
            _ => false,
        }
    }

    /// `l op r`: one side references a target column the other does not.
    fn comparison(&self, l: Option<&Value>, r: Option<&Value>) -> bool {
        if has_boolean(l) || has_boolean(r) {
            return false;
        }
        // `id = any(array(select id from t))` on target t: every row.
        let mut whole_target = false;
        for side in [l, r] {
            visit_outside_sublinks(side, &mut |tag, b| {
                if tag == "SubLink"
                    && SubLinkType::try_from(int_field(b, "sub_link_type"))
                        != Ok(SubLinkType::ExprSublink)
                {
                    let subselect = b.get("subselect");
                    whole_target |= self.reads_target(subselect) && !select_bounded(subselect);
                }
            });
        }
        if whole_target {
            return false;
        }
        let (l_direct, l_all) = (self.direct_targets(l), self.all_targets(l));
        let (r_direct, r_all) = (self.direct_targets(r), self.all_targets(r));
        let differs = |direct: &[Col], other: &[Col]| {
            direct
                .iter()
                .any(|c| !other.iter().any(|o| self.same_column(c, o)))
        };
        differs(&l_direct, &r_all) || differs(&r_direct, &l_all)
    }

    /// Whether two references may be the same column. With any column as
    /// the target (a SELECT's rows), names alone decide: `a.id = b.id` is a
    /// join, not a bound.
    fn same_column(&self, a: &Col, b: &Col) -> bool {
        a.name == b.name
            && (matches!(self.target, Target::Any)
                || a.qualifier.is_empty()
                || b.qualifier.is_empty()
                || a.qualifier == b.qualifier)
    }

    fn is_target(&self, c: &Col) -> bool {
        match self.target {
            Target::Any => true,
            Target::Relation { .. } if c.qualifier.is_empty() => !self.qualified_only,
            Target::Relation { refname, .. } => c.qualifier == refname,
        }
    }

    /// Target columns referenced outside subqueries.
    fn direct_targets(&self, v: Option<&Value>) -> Vec<Col> {
        let mut out = Vec::new();
        visit_outside_sublinks(v, &mut |tag, b| {
            if tag == "ColumnRef" {
                let c = col(b);
                if self.is_target(&c) {
                    out.push(c);
                }
            }
        });
        out
    }

    /// Target columns referenced anywhere, subqueries included: there an
    /// unqualified name counts unless the subquery reads only plain tables
    /// other than the target (then it is taken as the subquery's own).
    fn all_targets(&self, v: Option<&Value>) -> Vec<Col> {
        let mut out = self.direct_targets(v);
        let mut subselects = Vec::new();
        visit_outside_sublinks(v, &mut |tag, b| {
            if tag == "SubLink" {
                if let Some(s) = b.get("subselect") {
                    subselects.push(s.clone());
                }
            }
        });
        for s in &subselects {
            let opaque = self.opaque(s);
            visit_all(s, &mut |tag, b| {
                if tag == "ColumnRef" {
                    let c = col(b);
                    let counts = match self.target {
                        Target::Any => true,
                        Target::Relation { refname, .. } => {
                            if c.qualifier.is_empty() {
                                opaque
                            } else {
                                c.qualifier == refname
                            }
                        }
                    };
                    if counts {
                        out.push(c);
                    }
                }
            });
        }
        out
    }

    /// Whether a subquery's unqualified names may be the outer row's: it
    /// reads nothing, or something other than plain tables.
    fn opaque(&self, subselect: &Value) -> bool {
        let Some(("SelectStmt", s)) = tagged(subselect) else {
            return true;
        };
        let op = SetOperation::try_from(int_field(s, "op")).unwrap_or(SetOperation::Undefined);
        if !matches!(op, SetOperation::SetopNone | SetOperation::Undefined) {
            let side = |k: &str| s.get(k).is_none_or(|v| self.opaque(v));
            return side("larg") || side("rarg");
        }
        let Some(Value::Array(from)) = s.get("from_clause") else {
            return true;
        };
        from.is_empty() || from.iter().any(|item| !self.plain_tables(item))
    }

    /// Whether other relations of a write include the target's rows
    /// unbounded: the target itself, or a subquery reading it unbounded.
    fn joins_whole_target(&self, others: Option<&Value>) -> bool {
        let Some(v) = others else {
            return false;
        };
        if let Value::Array(items) = v {
            return items.iter().any(|i| self.joins_whole_target(Some(i)));
        }
        match tagged(v) {
            Some(("RangeSubselect", r)) => {
                let sub = r.get("subquery");
                self.reads_target(sub) && !select_bounded(sub)
            }
            Some(("JoinExpr", j)) => {
                self.joins_whole_target(j.get("larg")) || self.joins_whole_target(j.get("rarg"))
            }
            _ => self.reads_target(Some(v)),
        }
    }

    /// Whether a subquery reads the target relation itself.
    fn reads_target(&self, subselect: Option<&Value>) -> bool {
        let Target::Relation { relname, .. } = self.target else {
            return false;
        };
        let mut found = false;
        if let Some(s) = subselect {
            visit_all(s, &mut |tag, b| {
                found |= tag == "RangeVar" && str_field(b, "relname") == relname;
            });
        }
        found
    }

    fn plain_tables(&self, item: &Value) -> bool {
        match tagged(item) {
            Some(("RangeVar", _)) => true,
            Some(("JoinExpr", j)) => {
                j.get("larg").is_some_and(|v| self.plain_tables(v))
                    && j.get("rarg").is_some_and(|v| self.plain_tables(v))
            }
            _ => false,
        }
    }
}

fn col(b: &Obj) -> Col {
    let fields: Vec<&Value> = match b.get("fields") {
        Some(Value::Array(f)) => f.iter().collect(),
        _ => Vec::new(),
    };
    let names: Vec<String> = fields
        .iter()
        .map(|f| match tagged(f) {
            Some(("String", s)) => str_field(s, "sval").to_owned(),
            _ => "*".to_owned(),
        })
        .collect();
    match names.split_last() {
        Some((name, quals)) => Col {
            qualifier: quals.last().cloned().unwrap_or_default(),
            name: name.clone(),
        },
        None => Col {
            qualifier: String::new(),
            name: "*".into(),
        },
    }
}

/// Whether an operand contains a boolean expression (a comparison, AND/OR/
/// NOT, IS [NOT] NULL, IS TRUE, EXISTS, IN (subquery), …) outside
/// subqueries: `(id = id) = true` compares truth values, not the column.
fn has_boolean(v: Option<&Value>) -> bool {
    let mut found = false;
    visit_outside_sublinks(v, &mut |tag, b| {
        found |= match tag {
            "BoolExpr" | "NullTest" | "BooleanTest" => true,
            "SubLink" => !matches!(
                SubLinkType::try_from(int_field(b, "sub_link_type")),
                Ok(SubLinkType::ExprSublink | SubLinkType::ArraySublink)
            ),
            "AExpr" => match AExprKind::try_from(int_field(b, "kind")) {
                Ok(AExprKind::AexprOp) => {
                    let op = string_items(b.get("name"));
                    !op.last().is_some_and(|o| VALUE_OPERATORS.contains(o))
                }
                Ok(AExprKind::AexprNullif) => false,
                _ => true,
            },
            _ => false,
        };
    });
    found
}

/// Operators that compute a value rather than a truth value. Any other
/// operator is taken as a comparison.
const VALUE_OPERATORS: &[&str] = &[
    "+", "-", "*", "/", "%", "^", "||", "|/", "||/", "@", "&", "|", "#", "<<", ">>", "->", "->>",
    "#>", "#>>", "#-",
];

/// Calls `f(tag, body)` for every tagged node under `v` (itself included),
/// not descending into subqueries (their SubLink node is visited).
fn visit_outside_sublinks(v: Option<&Value>, f: &mut dyn FnMut(&str, &Obj)) {
    fn go(v: &Value, f: &mut dyn FnMut(&str, &Obj)) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| go(i, f)),
            Value::Object(m) => {
                if let Some((tag, body)) = tagged(v) {
                    f(tag, body);
                    if tag == "SubLink" {
                        if let Some(t) = body.get("testexpr") {
                            go(t, f);
                        }
                        return;
                    }
                    body.values().for_each(|x| go(x, f));
                } else {
                    m.values().for_each(|x| go(x, f));
                }
            }
            _ => {}
        }
    }
    if let Some(v) = v {
        go(v, f);
    }
}

/// Calls `f(tag, body)` for every tagged node under `v`, subqueries included.
fn visit_all(v: &Value, f: &mut dyn FnMut(&str, &Obj)) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| visit_all(i, f)),
        Value::Object(m) => {
            if let Some((tag, body)) = tagged(v) {
                f(tag, body);
                body.values().for_each(|x| visit_all(x, f));
            } else {
                m.values().for_each(|x| visit_all(x, f));
            }
        }
        _ => {}
    }
}

fn non_empty(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Array(a)) if !a.is_empty())
}
