// PostgreSQL 17.12 keeps an internal per-column version marker in pg_attribute.attoptions (pg_attver=<n>) on every
// column it creates. pg_dump 18.6, released before it, writes it out as a column option, which the 18.6 server
// rejects (`unrecognized parameter "pg_attver"`). The dump methods drop it from the dump stream (dump/filter.ts);
// pg_upgrade runs its own pg_dump and pg_restore of the schema, out of our reach, and fails on it. So it is cleared
// from the promoted standby before pg_upgrade --link: that copy is ours to change, the old data never is. Without
// a standby (pg_upgrade --copy reads the old data itself) the upgrade is refused before the old server stops.
import { queryEachDatabase } from "../docker/psql";

/** User columns only: the system catalogs' own are made anew by the new cluster's initdb. */
const USER_COLUMNS = "attrelid >= 16384 AND attoptions::text LIKE '%pg\\_attver=%'";

/** The sum, over every database, of the number the query's last row ends with. */
async function sumOverDatabases(
    container: string,
    superuser: string,
    sql: string,
    socketDir?: string,
): Promise<number> {
    const results = await queryEachDatabase(container, superuser, sql, socketDir);
    return results.reduce((sum, { rows }) => sum + Number(rows[rows.length - 1][0]), 0);
}

/** How many user columns carry the marker, over every database. */
export function countAttver(container: string, superuser: string, socketDir?: string): Promise<number> {
    return sumOverDatabases(container, superuser, `SELECT count(*) FROM pg_attribute WHERE ${USER_COLUMNS}`, socketDir);
}

/** Clears the marker from every user column of a cluster that is ours to change (the promoted standby). */
export function clearAttver(container: string, superuser: string, socketDir?: string): Promise<number> {
    return sumOverDatabases(
        container,
        superuser,
        `SET allow_system_table_mods = on;
        WITH cleared AS (
            UPDATE pg_attribute SET attoptions = NULLIF(array(SELECT o FROM unnest(attoptions) o WHERE o NOT LIKE 'pg\\_attver=%'), '{}')
            WHERE ${USER_COLUMNS} RETURNING 1)
        SELECT count(*) FROM cleared`,
        socketDir,
    );
}
