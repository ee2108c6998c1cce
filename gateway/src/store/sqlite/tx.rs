//! Write transactions begun and ended with cached statements.
//!
//! rusqlite's `Transaction` runs `BEGIN IMMEDIATE` and `COMMIT` through `execute_batch`, which
//! parses them again on every call: with two or three write transactions per job, that parsing
//! was ~4% of a busy server's CPU. [`Immediate`] prepares them once per connection (the
//! connection's statement cache) and rolls back on drop unless committed, like `Transaction`.

use std::ops::Deref;

use rusqlite::Connection;

/// An open `BEGIN IMMEDIATE` transaction; rolled back when dropped uncommitted.
pub(super) struct Immediate<'c> {
    /// The connection it runs on.
    conn: &'c Connection,
    /// Committed: nothing to undo on drop.
    committed: bool,
}

impl<'c> Immediate<'c> {
    /// Begins a write transaction (waiting up to the connection's busy timeout for the lock).
    pub(super) fn begin(conn: &'c Connection) -> rusqlite::Result<Immediate<'c>> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Immediate {
            conn,
            committed: false,
        })
    }

    /// Commits; on failure the transaction is rolled back when `self` is dropped.
    pub(super) fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.committed = true;
        Ok(())
    }
}

impl Deref for Immediate<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Immediate<'_> {
    fn drop(&mut self) {
        // SQLite may already have rolled back on its own (some errors do): then there is no
        // transaction left to end.
        if !self.committed && !self.conn.is_autocommit() {
            let rollback = self.conn.prepare_cached("ROLLBACK");
            if let Err(e) = rollback.and_then(|mut s| s.execute([])) {
                tracing::error!(error = %e, "store: rolling back failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_or_rolls_back_on_drop() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        let count = |conn: &Connection| -> i64 {
            conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                .unwrap()
        };
        let tx = Immediate::begin(&conn).unwrap();
        tx.execute("INSERT INTO t VALUES (1)", []).unwrap();
        drop(tx);
        assert_eq!(count(&conn), 0, "dropped uncommitted: rolled back");
        assert!(conn.is_autocommit());
        let tx = Immediate::begin(&conn).unwrap();
        tx.execute("INSERT INTO t VALUES (1)", []).unwrap();
        tx.commit().unwrap();
        assert_eq!(count(&conn), 1);
        assert!(conn.is_autocommit());
        // Twice more, on the cached statements.
        for _ in 0..2 {
            let tx = Immediate::begin(&conn).unwrap();
            tx.execute("INSERT INTO t VALUES (2)", []).unwrap();
            tx.commit().unwrap();
        }
        assert_eq!(count(&conn), 3);
    }
}
