"""psycopg2 (libpq) through pgwarden: SNI from host=<tenant>.pg.test, address from hostaddr."""
import sys

import psycopg2

from _common import UNICODE_SAMPLE, config, emit, libpq_params, md5, payload

cfg = config()
conn = psycopg2.connect(**libpq_params(cfg, "psycopg2-check"))
res = {"driver": "psycopg2", "version": psycopg2.__version__, "libpq": psycopg2.extensions.libpq_version()}
res["ssl_in_use"] = bool(conn.info.ssl_in_use)
cur = conn.cursor()

cur.execute("SELECT current_user, current_setting('application_name')")
res["user"], res["application_name"] = cur.fetchone()

# Parameterised (psycopg2 interpolates client side, so this is the simple protocol).
cur.execute("SELECT %s::int + %s::int, %s::text", (40, 2, UNICODE_SAMPLE))
total, text = cur.fetchone()
res["sum"] = total
res["unicode_ok"] = text == UNICODE_SAMPLE

# psycopg2 has no protocol-level prepare: SQL PREPARE/EXECUTE, reused.
cur.execute("PREPARE dbl(int) AS SELECT $1 * 2")
ok = True
for i in range(50):
    cur.execute("EXECUTE dbl(%s)", (i,))
    ok = ok and cur.fetchone()[0] == i * 2
cur.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = 'dbl'")
res["prepared"] = {"reuses": 50, "results_ok": ok, "server_statements": cur.fetchone()[0]}
conn.commit()

# Transaction: rollback discards; an error inside, ROLLBACK, then the connection still works.
cur.execute("CREATE TEMP TABLE t (v int)")
conn.commit()
cur.execute("INSERT INTO t VALUES (1), (2)")
conn.rollback()
cur.execute("SELECT count(*) FROM t")
rows_after_rollback = cur.fetchone()[0]
err_code = None
try:
    cur.execute("SELECT 1 / 0")
except psycopg2.Error as e:
    err_code = e.pgcode
conn.rollback()
cur.execute("SELECT 7")
res["rollback"] = {"rows_after_rollback": rows_after_rollback, "error_code": err_code, "after_ok": cur.fetchone()[0] == 7}

data = payload()
cur.execute("SELECT %s::bytea, md5(%s::bytea)", (psycopg2.Binary(data), psycopg2.Binary(data)))
back, server_md5 = cur.fetchone()
back = bytes(back)
res["bytea"] = {"length": len(back), "equal": back == data, "md5_match": server_md5 == md5(data)}
conn.commit()
conn.close()
emit(res)
