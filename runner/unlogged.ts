// Unlogged tables and sequences across the standby copy of method pg_upgrade.
//
// Unlogged relations are never written to the WAL, so a standby holds them empty: at its promotion PostgreSQL
// resets each one from its init fork (an empty table, a sequence at its start). A real Synapse has two
// (worker_read_write_locks and worker_read_write_locks_mode), so refusing the standby for them would turn every
// real homeserver's upgrade into a copy of all its data while Synapse is down. Instead, at the downtime, once
// writes have stopped (Synapse stopped, no client connected: preflight), the old server is asked what its
// unlogged relations hold; tables with rows are copied across (COPY, table by table, triggers off as a restore
// does) and sequences set to their old position, after pg_upgrade and before verify compares every table's rows.
// This holds for any database, not for a list of Synapse's tables.
import { query, quoteLiteral } from "./docker";
import { run, runPiped } from "./process";

export interface UnloggedRelation {
    database: string;
    /** Schema-qualified and quoted as PostgreSQL prints a regclass. */
    name: string;
    kind: "table" | "sequence";
    /** Tables: whether it holds a row. Sequences: "last_value,is_called". */
    content: string;
}

export interface UnloggedCarried {
    /** Every unlogged relation found, by database-qualified name. */
    found: string[];
    /** Tables that held rows, with the rows copied. */
    tables: { name: string; rows: number }[];
    /** Sequences set to the old cluster's position. */
    sequences: string[];
}

/** query_to_xml runs a query built per relation inside one statement: one round trip per database. */
const INVENTORY = `
SELECT c.oid::regclass::text,
       CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END,
       (xpath('/row/v/text()', query_to_xml(
            CASE c.relkind
                WHEN 'S' THEN format('SELECT last_value || '','' || is_called AS v FROM %s', c.oid::regclass)
                ELSE format('SELECT EXISTS (SELECT 1 FROM %s) AS v', c.oid::regclass)
            END, false, true, '')))[1]::text
FROM pg_class c
WHERE c.relpersistence = 'u' AND c.relkind IN ('r', 'S')
ORDER BY 1`;

/** The unlogged relations of every database of a running cluster, with what they hold now. */
export async function unloggedRelations(container: string, superuser: string): Promise<UnloggedRelation[]> {
    const databases = (await query(container, superuser, "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")).map(([d]) => d);
    const perDatabase = await Promise.all(databases.map(async (database) =>
        (await query(container, superuser, INVENTORY, database)).map(([name, kind, content]) =>
            ({ database, name, kind: kind as UnloggedRelation["kind"], content }))));
    return perDatabase.flat();
}

/** For prepare's report: which unlogged relations there are, in words. */
export function describeUnlogged(found: UnloggedRelation[]): string {
    const names = found.map((r) => `${r.database}.${r.name}`);
    return `${found.length} unlogged relation(s) (${names.slice(0, 4).join(", ")}${names.length > 4 ? ", ..." : ""})`;
}

/**
 * Copies what the old cluster's unlogged relations hold into the new cluster, which has them empty (the promoted
 * standby's): tables with rows by COPY, sequences by setval. `found` is read on the old server after writes stopped.
 */
export async function carryUnlogged(found: UnloggedRelation[], old: string, oldSuperuser: string, target: string, superuser: string): Promise<UnloggedCarried> {
    const carried: UnloggedCarried = { found: found.map((r) => `${r.database}.${r.name}`), tables: [], sequences: [] };
    for (const r of found) {
        if (r.kind === "sequence") {
            const [last, called] = r.content.split(",");
            await query(target, superuser, `SELECT setval(${quoteLiteral(r.name)}, ${quoteLiteral(last)}::bigint, ${called === "true"})`, r.database);
            carried.sequences.push(`${r.database}.${r.name}`);
        } else if (r.content === "true") {
            carried.tables.push({ name: `${r.database}.${r.name}`, rows: await copyTable(r, old, oldSuperuser, target, superuser) });
        }
    }
    return carried;
}

/** One table's rows, old server to new, as text COPY through a pipe (never held in memory). */
async function copyTable(r: UnloggedRelation, old: string, oldSuperuser: string, target: string, superuser: string): Promise<number> {
    let report = "";
    await runPiped(
        (stdout) => run("docker", ["exec", old, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", oldSuperuser, "-d", r.database,
            "-c", `COPY ${r.name} TO STDOUT`], { stdout }),
        async (stdin) => {
            // session_replication_role=replica: triggers and foreign keys do not fire, as in a data-only restore.
            const result = await run("docker", ["exec", "-i", "-e", "PGOPTIONS=-c session_replication_role=replica", target,
                "psql", "-X", "-v", "ON_ERROR_STOP=1", "-U", superuser, "-d", r.database, "-c", `COPY ${r.name} FROM STDIN`], { stdin });
            report = result.stdout;
        },
    );
    const m = /COPY (\d+)/.exec(report);
    return m ? Number(m[1]) : 0;
}

/** What the upgrade step says it did with them. */
export function describeCarried(c: UnloggedCarried): string {
    if (c.found.length === 0) return "";
    const parts = [];
    if (c.tables.length) parts.push(`copied ${c.tables.map((t) => `${t.rows} row(s) of ${t.name}`).join(", ")}`);
    if (c.sequences.length) parts.push(`set ${c.sequences.join(", ")} to the old position`);
    const empty = c.found.length - c.tables.length - c.sequences.length;
    if (empty) parts.push(`${empty} table(s) empty once writes stopped, nothing to copy`);
    return `unlogged relations, which a standby holds empty: ${parts.join("; ")}`;
}
