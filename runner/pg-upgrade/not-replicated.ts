// What a standby does not hold exactly as its primary does, carried across at the downtime of method pg_upgrade.
//
// - Unlogged relations are never written to the WAL: a standby holds them empty (at its promotion PostgreSQL
//   resets each from its init fork: an empty table, a sequence at its start). A real Synapse has two unlogged
//   tables (worker_read_write_locks and worker_read_write_locks_mode); refusing the standby for them would turn
//   every real homeserver's upgrade into a copy of all its data while Synapse is down.
// - Sequences are WAL-logged ahead of use (up to 32 values per record), so a standby's sequences stand up to 32
//   values past the primary's: harmless gaps, but not the old cluster's state, which verify compares exactly.
//
// So once writes have stopped (Synapse stopped, no client connected: preflight), the old server is asked what
// its unlogged tables hold and where every sequence stands; after pg_upgrade --link, tables with rows are copied
// across (COPY, table by table, triggers off as a restore does) and every sequence is set to its old position,
// before verify compares every table and sequence. This holds for any database, not for a list of Synapse's.
import { dbConninfo, query, queryEachDatabase, quoteLiteral } from "../docker/psql";
import { run, runPiped } from "../docker/process";

export interface Relation {
    database: string;
    /** Schema-qualified and quoted as PostgreSQL prints a regclass. */
    name: string;
    kind: "table" | "sequence";
    unlogged: boolean;
    /** Tables: whether it holds a row. Sequences: "last_value,is_called". */
    content: string;
}

export interface Carried {
    /** Every unlogged relation found, by database-qualified name. */
    unlogged: string[];
    /** Unlogged tables that held rows, with the rows copied; and how many held none. */
    tables: { name: string; rows: number }[];
    emptyTables: number;
    /** Sequences set to the old cluster's position. */
    sequences: number;
}

/** query_to_xml runs a query built per relation inside one statement: one round trip per database. */
const INVENTORY = `
SELECT c.oid::regclass::text,
       CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END,
       c.relpersistence = 'u',
       (xpath('/row/v/text()', query_to_xml(
            CASE c.relkind
                WHEN 'S' THEN format('SELECT last_value || '','' || is_called AS v FROM %s', c.oid::regclass)
                ELSE format('SELECT EXISTS (SELECT 1 FROM %s) AS v', c.oid::regclass)
            END, false, true, '')))[1]::text
FROM pg_class c
WHERE c.relkind = 'S' OR (c.relpersistence = 'u' AND c.relkind = 'r')
ORDER BY 1`;

/** Every database's unlogged tables (and whether they hold rows) and sequences (and where they stand). */
export async function relationsNotReplicated(container: string, superuser: string): Promise<Relation[]> {
    return (await queryEachDatabase(container, superuser, INVENTORY)).flatMap(({ database, rows }) =>
        rows.map(([name, kind, unlogged, content]) => ({
            database,
            name,
            kind: kind as Relation["kind"],
            unlogged: unlogged === "t",
            content,
        })),
    );
}

/** For prepare's report: the unlogged relations a standby will hold empty, in words ("" when there are none). */
export function describeUnlogged(found: Relation[]): string {
    const names = found.filter((r) => r.unlogged).map((r) => `${r.database}.${r.name}`);
    if (names.length === 0) return "";
    return `${names.length} unlogged relation(s) (${names.slice(0, 4).join(", ")}${names.length > 4 ? ", ..." : ""})`;
}

/**
 * Makes the new cluster (the promoted standby, upgraded) hold what the old one holds where a standby differs:
 * unlogged tables' rows by COPY, every sequence's position by setval (one statement per database).
 * `found` was read on the old server after writes stopped.
 */
export async function carryNotReplicated(
    found: Relation[],
    old: string,
    oldSuperuser: string,
    target: string,
    superuser: string,
): Promise<Carried> {
    const carried: Carried = {
        unlogged: found.filter((r) => r.unlogged).map((r) => `${r.database}.${r.name}`),
        tables: [],
        emptyTables: 0,
        sequences: 0,
    };
    const sequencesByDatabase = new Map<string, Relation[]>();
    for (const r of found) {
        if (r.kind === "sequence")
            sequencesByDatabase.set(r.database, [...(sequencesByDatabase.get(r.database) ?? []), r]);
    }
    await Promise.all(
        [...sequencesByDatabase].map(async ([database, sequences]) => {
            const values = sequences.map((s) => {
                const [last, called] = s.content.split(",");
                return `(${quoteLiteral(s.name)}, ${quoteLiteral(last)}::bigint, ${called === "true"})`;
            });
            await query(
                target,
                superuser,
                `SELECT count(setval(s::regclass, v, c)) FROM (VALUES ${values.join(", ")}) AS t(s, v, c)`,
                database,
            );
            carried.sequences += sequences.length;
        }),
    );
    for (const r of found.filter((t) => t.kind === "table")) {
        if (r.content === "true")
            carried.tables.push({
                name: `${r.database}.${r.name}`,
                rows: await copyTable(r, old, oldSuperuser, target, superuser),
            });
        else carried.emptyTables++;
    }
    return carried;
}

/** One table's rows, old server to new, as text COPY through a pipe (never held in memory). */
async function copyTable(
    r: Relation,
    old: string,
    oldSuperuser: string,
    target: string,
    superuser: string,
): Promise<number> {
    let report = "";
    await runPiped(
        (stdout) =>
            run(
                "docker",
                [
                    "exec",
                    old,
                    "psql",
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-U",
                    oldSuperuser,
                    "-d",
                    dbConninfo(r.database),
                    "-c",
                    `COPY ${r.name} TO STDOUT`,
                ],
                { stdout },
            ),
        async (stdin) => {
            // session_replication_role=replica: triggers and foreign keys do not fire, as in a data-only restore.
            const result = await run(
                "docker",
                [
                    "exec",
                    "-i",
                    "-e",
                    "PGOPTIONS=-c session_replication_role=replica",
                    target,
                    "psql",
                    "-X",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-U",
                    superuser,
                    "-d",
                    dbConninfo(r.database),
                    "-c",
                    `COPY ${r.name} FROM STDIN`,
                ],
                { stdin },
            );
            report = result.stdout;
        },
    );
    const m = /COPY (\d+)/.exec(report);
    return m ? Number(m[1]) : 0;
}

/** What the upgrade step says it did. */
export function describeCarried(c: Carried): string {
    const parts = [
        `set ${c.sequences} sequence(s) to the old cluster's positions (a standby's stand up to 32 values ahead)`,
    ];
    if (c.tables.length + c.emptyTables > 0) {
        const copied = c.tables.length
            ? `copied ${c.tables.map((t) => `${t.rows} row(s) of ${t.name}`).join(", ")}`
            : "";
        const empty = c.emptyTables ? `${c.emptyTables} empty once writes stopped, nothing to copy` : "";
        parts.push(`unlogged tables, which a standby holds empty: ${[copied, empty].filter(Boolean).join("; ")}`);
    }
    return parts.join("; ");
}
