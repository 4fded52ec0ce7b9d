"""Times one SQL query in DuckDB over the rollup lake: the baseline of the rating benchmark.

Usage: duckdb_query.py LAKE RUNS THREADS SQL_FILE
The SQL names the rollups as the view `rollups` (hive-partitioned Parquet under
LAKE/rollups). Prints one JSON object: DuckDB's version, the seconds of each run and the
number of result rows of the last run.
"""

import json
import sys
import time

import duckdb


def main() -> None:
    lake, runs, threads, sql_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with open(sql_file, encoding="utf-8") as handle:
        query = handle.read()
    connection = duckdb.connect()
    connection.execute(f"SET threads = {threads}")
    files = f"{lake}/rollups/*/*.parquet".replace("'", "''")
    connection.execute(
        f"CREATE VIEW rollups AS SELECT * FROM read_parquet('{files}', hive_partitioning = true)"
    )
    seconds = []
    rows = 0
    for _ in range(runs):
        started = time.perf_counter()
        rows = len(connection.execute(query).fetchall())
        seconds.append(time.perf_counter() - started)
    print(json.dumps({"version": duckdb.__version__, "seconds": seconds, "rows": rows}))


if __name__ == "__main__":
    main()
