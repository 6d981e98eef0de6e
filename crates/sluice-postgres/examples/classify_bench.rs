//! Parse + classify cost per statement, uncached (the cache absorbs repeats),
//! and through the cache when every text differs in its constants (the
//! simple protocol: the shape cache). Run by `cargo xtask bench`.

use std::time::Instant;

fn main() {
    let statements = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "select c.name, count(o.id) from customers c join orders o on o.customer_id = c.id where c.created_at > now() - interval '7 days' group by c.name order by 2 desc limit 10",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        "insert into orders (customer_id, amount, status) values (1, 9.99, 'new') returning id",
        "with d as (delete from orders where status = 'void' returning *) select count(*) from d",
    ];
    let rounds = 2000;
    println!("SQL parse + classify (uncached, {rounds} runs each):");
    for sql in statements {
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            let r = sluice_postgres::sql::classify(sql);
            times.push(t.elapsed());
            if r.is_err() {
                println!("  classify failed for {sql:?}");
                break;
            }
        }
        times.sort();
        let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        let short: String = sql.chars().take(60).collect();
        println!("  p50 {:>6.1} µs  p99 {:>6.1} µs  {short}", p(0.5), p(0.99));
    }
    let cache = sluice_postgres::sql::ClassifierCache::new(1024);
    let mut times = Vec::with_capacity(rounds);
    for aid in 0..rounds {
        let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
        let t = Instant::now();
        let r = cache.classify(&sql);
        times.push(t.elapsed());
        if r.is_err() {
            return println!("  classify failed for {sql:?}");
        }
    }
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "Through the cache, every text with other constants (simple protocol; {rounds} runs):\n  p50 {:>6.1} µs  p99 {:>6.1} µs  SELECT abalance FROM pgbench_accounts WHERE aid = N;",
        p(0.5),
        p(0.99)
    );
}
