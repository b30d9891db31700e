// verify: compares the old and the new cluster before the switch. Databases with encoding and locale, roles with
// attributes and password hashes, every table's row count, every sequence's value, and a password login as the
// Synapse role over TCP (the new cluster's host rule, scram-sha-256, not the trusted socket).
import { ContainerInfo, requireContainer, resumeStaging, superuserOf } from "../docker/containers";
import { queryScript, quoteLiteral } from "../docker/psql";
import { tcpLoginError } from "./password";
import { StepError } from "../step-error";
import { PASSWORD_ENV } from "../names";

export interface VerifyInput {
    old: string;
    new: string;
    /** The role Synapse logs in as, and its database. */
    loginUser: string;
    loginDatabase: string;
    /** Synapse's password (from SYNAPSE_PG_PASSWORD); without it the login check is reported as not run. */
    password?: string;
}

export interface Comparison {
    what: string;
    old: string;
    new: string;
    same: boolean;
}

export interface VerifyReport {
    old: string;
    new: string;
    comparisons: Comparison[];
    tables: number;
    rows: number;
    login: { user: string; database: string; ok: boolean; error?: string };
    differences: string[];
}

interface Snapshot {
    databases: Map<string, string>;
    roles: Map<string, string>;
    /** Each role's password hash digest: only ever compared, never part of a report. */
    passwords: Map<string, string>;
    tables: Map<string, number>;
    sequences: Map<string, string>;
}

/**
 * What psql runs in each database (a nested psql, fed by the outer one): every table's exact row count (one UNION
 * ALL of count(*) per table, built and run by the server with \gexec), every sequence, then a "done" row, so a
 * database that could not be read is found missing instead of silently compared as empty on both sides. A
 * format() template: %1$s is the database as a connection string for \c (DATNAME_CONNINFO), %2$s as a literal.
 */
const PER_DATABASE = [
    "\\c -reuse-previous=on %1$s",
    `SELECT string_agg(format('SELECT %L, %L, count(*) FROM %I.%I', 'table', %2$s || '.' || format('%I.%I', n.nspname, c.relname), n.nspname, c.relname), ' UNION ALL ')
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
     HAVING count(*) > 0 \\gexec`,
    "SELECT 'sequence', %2$s || '.' || format('%I.%I', schemaname, sequencename), coalesce(last_value::text, 'unused') FROM pg_sequences ORDER BY 2;",
    "SELECT 'done', %2$s;",
].join("\n");

/**
 * pg_database.datname as `dbname='...'` (see dbConninfo), double-quoted for psql's \c as pg_dump's
 * appendPsqlMetaConnect does: a bare name holding "=" would be read as a connection string to anywhere.
 */
const DATNAME_CONNINFO = String.raw`quote_ident('dbname=''' || replace(replace(datname, '\', '\\'), '''', '\''') || '''')`;

/**
 * Everything verify compares, read in one docker exec per cluster (each is a tenth of a second of downtime): the
 * databases and roles, then, through `\g |psql`, a nested psql in the same container that connects to each
 * database in turn (psql cannot loop over databases itself).
 */
async function snapshot(container: string, user: string, side: "old" | "new"): Promise<Snapshot> {
    const nested = `psql -X -q -A -t -v ON_ERROR_STOP=1 -U '${user.replace(/'/g, "'\\''")}' -d postgres`;
    const script = [
        // The nested psql first: the outer one has printed nothing yet, so their rows cannot interleave.
        `SELECT E'\\\\pset fieldsep \\'\\\\x1f\\'\\n\\\\pset recordsep \\'\\\\x1e\\'\\n'
                || string_agg(format(${quoteLiteral(PER_DATABASE.replace(/%(?![12]\$s)/g, "%%"))}, ${DATNAME_CONNINFO}, quote_literal(datname)), E'\\n' ORDER BY datname)
           FROM pg_database WHERE datallowconn AND datname <> 'template1' \\g |${nested}`,
        `SELECT 'database', datname, pg_encoding_to_char(encoding) || ' ' || datcollate || '/' || datctype FROM pg_database WHERE datname <> 'template0' ORDER BY 2;`,
        `SELECT 'role', rolname, concat_ws(' ', CASE WHEN rolsuper THEN 'superuser' END, CASE WHEN rolcanlogin THEN 'login' END,
                CASE WHEN rolcreatedb THEN 'createdb' END, CASE WHEN rolcreaterole THEN 'createrole' END,
                CASE WHEN rolreplication THEN 'replication' END, CASE WHEN rolbypassrls THEN 'bypassrls' END,
                CASE WHEN NOT rolinherit THEN 'noinherit' END, 'connlimit=' || rolconnlimit)
                || ' ' || CASE WHEN rolpassword LIKE 'md5%' THEN 'md5' WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram' ELSE 'none' END
           FROM pg_authid WHERE rolname !~ '^pg_' ORDER BY 2;`,
        // Compared in memory and never printed, not even in part: a digest of an md5 hash is a guessing oracle.
        `SELECT 'password', rolname, encode(sha256(convert_to(coalesce(rolpassword, ''), 'UTF8')), 'hex') FROM pg_authid WHERE rolname !~ '^pg_';`,
        `SELECT 'expect', datname FROM pg_database WHERE datallowconn AND datname <> 'template1' ORDER BY 2;`,
    ];
    const databases = new Map<string, string>();
    const roles = new Map<string, string>();
    const passwords = new Map<string, string>();
    const tables = new Map<string, number>();
    const sequences = new Map<string, string>();
    const expected: string[] = [];
    const done = new Set<string>();
    const { rows, stderr } = await queryScript(container, user, script.join("\n"));
    for (const [kind, key, value] of rows) {
        if (kind === "database") databases.set(key, value);
        else if (kind === "role") roles.set(key, value);
        else if (kind === "password") passwords.set(key, value);
        else if (kind === "expect") expected.push(key);
        else if (kind === "table") tables.set(key, Number(value));
        else if (kind === "sequence") sequences.set(key, value);
        else if (kind === "done") done.add(key);
    }
    const unread = expected.filter((db) => !done.has(db));
    if (unread.length > 0) {
        // The new cluster's access rules are the old one's as copy-config carried them: a fix made to the old
        // cluster's since reaches the new one only with a fresh copy.
        const carried =
            side === "new"
                ? "; its access rules are the old cluster's as copy-config carried them, so after changing the old cluster's, bump postgres:attempt"
                : "";
        throw new StepError(
            `verify could not read the database(s) ${unread.join(", ")} in "${container}", so it cannot compare them: ${stderr.trim().split("\n").pop() || "no error said"}${carried}.`,
        );
    }
    return { databases, roles, passwords, tables, sequences };
}

function compare(kind: string, a: Map<string, string | number>, b: Map<string, string | number>): Comparison[] {
    const keys = [...new Set([...a.keys(), ...b.keys()])].sort();
    return keys.map((k) => {
        const o = a.has(k) ? String(a.get(k)) : "(missing)";
        const n = b.has(k) ? String(b.get(k)) : "(missing)";
        return { what: `${kind} ${k}`, old: o, new: n, same: o === n };
    });
}

/**
 * Roles by attributes and hash kind, and whether the password hash is the same one; the report says "another
 * password hash", never any part of it. The Synapse role's md5 hash is re-hashed as scram-sha-256 by the upgrade
 * (the login check proves the new one).
 */
function compareRoles(a: Snapshot, b: Snapshot, loginUser: string): Comparison[] {
    return compare("role", a.roles, b.roles).map((c) => {
        const role = c.what.slice("role ".length);
        if (role === loginUser && c.old.endsWith(" md5") && c.new === c.old.replace(/ md5$/, " scram")) {
            return { ...c, same: true, new: `${c.new} (re-hashed from md5)` };
        }
        if (c.same && a.passwords.get(role) !== b.passwords.get(role))
            return { ...c, same: false, new: `${c.new}, another password hash` };
        return c;
    });
}

async function checkLogin(info: ContainerInfo, input: VerifyInput): Promise<VerifyReport["login"]> {
    const login = { user: input.loginUser, database: input.loginDatabase };
    if (!input.password) return { ...login, ok: false, error: `no password given (${PASSWORD_ENV})` };
    const error = await tcpLoginError(info, input.loginUser, input.password, input.loginDatabase);
    return error === undefined ? { ...login, ok: true } : { ...login, ok: false, error: error.replace(/^.*?: /, "") };
}

export async function verifyClusters(input: VerifyInput): Promise<VerifyReport> {
    const [oldInfo, newInfo] = await Promise.all([
        requireContainer(input.old, "old"),
        requireContainer(input.new, "new").then(resumeStaging),
    ]);
    for (const c of [oldInfo, newInfo]) {
        if (!c.running)
            throw new StepError(
                `The container "${c.name}" is not running, so it cannot be compared; start it and run verify again.`,
            );
    }
    // Side by side (Synapse is down): both clusters' contents and the password login.
    const [read, login] = await Promise.all([
        Promise.allSettled([
            snapshot(input.old, superuserOf(oldInfo), "old"),
            snapshot(input.new, superuserOf(newInfo), "new"),
        ]),
        checkLogin(newInfo, input),
    ]);
    // The old cluster's failure first, whichever came first: the carried access rules can refuse both alike.
    for (const r of read) if (r.status === "rejected") throw r.reason;
    const [a, b] = read.map((r) => (r as PromiseFulfilledResult<Snapshot>).value);
    const roles = compareRoles(a, b, input.loginUser);
    const comparisons = [
        ...compare("database", a.databases, b.databases),
        ...roles,
        ...compare("table", a.tables, b.tables),
        ...compare("sequence", a.sequences, b.sequences),
    ];
    const differences = comparisons.filter((c) => !c.same).map((c) => `${c.what}: ${c.old} in old, ${c.new} in new`);
    if (!login.ok)
        differences.push(`login as ${login.user} to ${login.database} on the new cluster failed: ${login.error}`);
    return {
        old: input.old,
        new: input.new,
        comparisons,
        tables: b.tables.size,
        rows: [...b.tables.values()].reduce((s, n) => s + n, 0),
        login,
        differences,
    };
}

export function formatReport(r: VerifyReport): string {
    const w = Math.max(10, ...r.comparisons.map((c) => c.what.length));
    const v = Math.max(6, ...r.comparisons.flatMap((c) => [c.old.length, c.new.length]));
    const lines = [`${"check".padEnd(w)}  ${"old".padEnd(v)}  ${"new".padEnd(v)}  result`];
    for (const c of r.comparisons)
        lines.push(`${c.what.padEnd(w)}  ${c.old.padEnd(v)}  ${c.new.padEnd(v)}  ${c.same ? "same" : "DIFFERENT"}`);
    lines.push(
        `login ${r.login.user}@${r.login.database} over TCP with password: ${r.login.ok ? "ok" : `FAILED (${r.login.error})`}`,
    );
    lines.push(`${r.tables} tables, ${r.rows} rows compared; ${r.differences.length} difference(s)`);
    return lines.join("\n");
}
