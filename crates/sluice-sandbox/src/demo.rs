//! The demo data set: roles `app` (scram-sha-256) and `legacy` (md5), database `app` with
//! `customers` (realistic-looking personal data for the masking demo) and `orders`.

use std::fmt;
use std::fmt::Write as _;

use crate::{random_hex, SandboxError, TempPostgres};

/// Credentials and names of the demo database created by [`TempPostgres::seed_demo`].
#[derive(Clone, PartialEq, Eq)]
pub struct DemoDatabase {
    /// The database name (`app`).
    pub database: String,
    /// The owner role, authenticating with scram-sha-256 (`app`).
    pub user: String,
    /// Its random password (hex, URL-safe).
    pub password: String,
    /// A role whose password is stored and checked as md5 (`legacy`).
    pub md5_user: String,
    /// Its random password (hex, URL-safe).
    pub md5_password: String,
}

impl fmt::Debug for DemoDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoDatabase")
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("md5_user", &self.md5_user)
            .field("md5_password", &"<redacted>")
            .finish()
    }
}

/// The demo data's sensitive values (every customer's email, card number and national id),
/// which a gateway with the quickstart masking must never let reach a client in clear.
pub fn demo_sensitive_values() -> Vec<String> {
    customers()
        .into_iter()
        .flat_map(|c| [c.email, c.card_number, c.national_id])
        .collect()
}

/// Number of rows in `customers`.
pub(crate) const CUSTOMERS: usize = 50;
/// Number of rows in `orders`.
pub(crate) const ORDERS: usize = 100;

impl TempPostgres {
    /// Creates the demo roles, database and tables (see [`DemoDatabase`]). Call once per server.
    pub fn seed_demo(&self) -> Result<DemoDatabase, SandboxError> {
        let demo = DemoDatabase {
            database: "app".to_string(),
            user: "app".to_string(),
            password: random_hex(16)?,
            md5_user: "legacy".to_string(),
            md5_password: random_hex(16)?,
        };
        // Passwords are hex, so they need no quoting.
        self.psql(
            "postgres",
            &format!(
                "CREATE ROLE {user} LOGIN PASSWORD '{password}';\n\
                 SET password_encryption = 'md5';\n\
                 CREATE ROLE {md5_user} LOGIN PASSWORD '{md5_password}';\n\
                 RESET password_encryption;\n\
                 CREATE DATABASE {database} OWNER {user};\n",
                user = demo.user,
                password = demo.password,
                md5_user = demo.md5_user,
                md5_password = demo.md5_password,
                database = demo.database,
            ),
        )?;
        self.psql(&demo.database, &demo_schema_sql(&demo.user, &demo.md5_user))?;
        Ok(demo)
    }
}

const FIRST_NAMES: [&str; 25] = [
    "Alice", "Bruno", "Chloe", "Daniel", "Emma", "Farid", "Grace", "Hiro", "Isabel", "Jonas",
    "Keiko", "Liam", "Maria", "Noah", "Olivia", "Pablo", "Quinn", "Rosa", "Samuel", "Tara", "Umar",
    "Vera", "Wei", "Ximena", "Yusuf",
];

const LAST_NAMES: [&str; 20] = [
    "Anderson", "Brown", "Castillo", "Dubois", "Evans", "Fischer", "Garcia", "Hansen", "Ito",
    "Johnson", "Kowalski", "Lopez", "Martin", "Nakamura", "O'Brien", "Patel", "Rossi", "Silva",
    "Thompson", "Weber",
];

/// Well-known Luhn-valid test card numbers (Visa, Mastercard, Amex, Discover).
const TEST_CARDS: [&str; 10] = [
    "4111111111111111",
    "5555555555554444",
    "4012888888881881",
    "378282246310005",
    "6011111111111117",
    "5105105105105100",
    "4242424242424242",
    "4000056655665556",
    "5200828282828210",
    "371449635398431",
];

const STATUSES: [&str; 5] = ["paid", "shipped", "pending", "refunded", "cancelled"];

/// The Luhn check digit for `payload` (digits only).
pub(crate) fn luhn_check_digit(payload: &str) -> u32 {
    let sum: u32 = payload
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// Whether `number` (digits only) passes the Luhn check.
#[cfg(test)]
pub(crate) fn luhn_valid(number: &str) -> bool {
    match number.split_at_checked(number.len().saturating_sub(1)) {
        Some((payload, check)) if !payload.is_empty() => {
            check.parse::<u32>().ok() == Some(luhn_check_digit(payload))
        }
        _ => false,
    }
}

/// A small deterministic generator (64-bit LCG), so the demo data is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// One demo customer row.
pub(crate) struct Customer {
    pub name: String,
    pub email: String,
    pub card_number: String,
    pub national_id: String,
    pub phone: String,
    pub created_at: String,
}

pub(crate) fn customers() -> Vec<Customer> {
    let mut rng = Lcg(0x005e_ed51_u64);
    (0..CUSTOMERS)
        .map(|i| {
            let first = FIRST_NAMES[i % FIRST_NAMES.len()];
            let last = LAST_NAMES[(i * 7 + 3) % LAST_NAMES.len()];
            let email_local: String = format!("{first}.{last}")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
                .collect::<String>()
                .to_ascii_lowercase();
            let card_number = match TEST_CARDS.get(i) {
                Some(card) => (*card).to_string(),
                None => {
                    let prefix = if i % 2 == 0 {
                        "4".to_string()
                    } else {
                        format!("5{}", 1 + rng.below(5))
                    };
                    let mut payload = prefix;
                    while payload.len() < 15 {
                        let _ = write!(payload, "{}", rng.below(10));
                    }
                    let check = luhn_check_digit(&payload);
                    format!("{payload}{check}")
                }
            };
            let national_id = if i == 0 {
                "123-45-6789".to_string()
            } else {
                // Area 001-665 or 667-899 (never 000, 666 or 9xx), group 01-99, serial 0001-9999.
                let mut area = 1 + rng.below(898);
                if area == 666 {
                    area = 667;
                }
                format!(
                    "{area:03}-{:02}-{:04}",
                    1 + rng.below(99),
                    1 + rng.below(9999)
                )
            };
            // 555-01xx numbers are reserved for fiction.
            let phone = format!("+1 202-555-{:04}", 100 + i);
            let created_at = format!(
                "2024-{:02}-{:02} {:02}:{:02}:00+00",
                1 + i % 12,
                1 + (i * 5) % 28,
                8 + i % 10,
                (i * 17) % 60
            );
            Customer {
                name: format!("{first} {last}"),
                email: format!("{email_local}@example.com"),
                card_number,
                national_id,
                phone,
                created_at,
            }
        })
        .collect()
}

fn demo_schema_sql(owner: &str, other: &str) -> String {
    let mut sql = format!(
        "BEGIN;\n\
         SET ROLE {owner};\n\
         CREATE TABLE customers (\n\
         \x20   id serial PRIMARY KEY,\n\
         \x20   name text,\n\
         \x20   email text,\n\
         \x20   card_number text,\n\
         \x20   national_id text,\n\
         \x20   phone text,\n\
         \x20   created_at timestamptz DEFAULT now()\n\
         );\n\
         CREATE TABLE orders (\n\
         \x20   id serial PRIMARY KEY,\n\
         \x20   customer_id int REFERENCES customers,\n\
         \x20   amount numeric(10,2),\n\
         \x20   status text\n\
         );\n\
         INSERT INTO customers (name, email, card_number, national_id, phone, created_at) VALUES\n"
    );
    let rows: Vec<String> = customers()
        .iter()
        .map(|c| {
            format!(
                "  ({}, {}, {}, {}, {}, {})",
                quote(&c.name),
                quote(&c.email),
                quote(&c.card_number),
                quote(&c.national_id),
                quote(&c.phone),
                quote(&c.created_at)
            )
        })
        .collect();
    sql.push_str(&rows.join(",\n"));
    sql.push_str(";\nINSERT INTO orders (customer_id, amount, status) VALUES\n");
    let mut rng = Lcg(0x0de5_u64);
    let rows: Vec<String> = (0..ORDERS)
        .map(|i| {
            let customer = 1 + (i * 13) % CUSTOMERS;
            let cents = 500 + rng.below(49_500);
            let status = STATUSES[(i + (i / 7)) % STATUSES.len()];
            format!(
                "  ({customer}, {}.{:02}, {})",
                cents / 100,
                cents % 100,
                quote(status)
            )
        })
        .collect();
    sql.push_str(&rows.join(",\n"));
    let _ = write!(
        sql,
        ";\nGRANT ALL ON ALL TABLES IN SCHEMA public TO {owner}, {other};\n\
         GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {owner}, {other};\n\
         RESET ROLE;\n\
         COMMIT;\n\
         ANALYZE customers, orders;\n"
    );
    sql
}
