// SQL in a cluster's container: psql through docker exec (no TCP, no password), its rows, and quoting.
import { ProcessError, run } from "./process";
import { StepError } from "../step-error";
import { containerLogTail, inspectContainer } from "./containers";
import { sleep } from "../host";

const FIELD = "\x1f";
const RECORD = "\x1e";

/** psql with no psqlrc, quiet, unaligned rows on the separators above, and stopping at the first error. */
function psqlArgs(user: string, database: string): string[] {
    const rows = ["-A", "-t", "-F", FIELD, "-R", RECORD];
    return ["-X", "-q", ...rows, "-v", "ON_ERROR_STOP=1", "-U", user, "-d", dbConninfo(database)];
}

/**
 * Runs one SQL statement in the container over its local socket (trusted in the official image) and returns the
 * rows. Fields and records are split on ASCII separators, so text with commas or newlines survives. `socketDir`
 * for a server whose socket is not in psql's default folder (pg_upgrade's standby).
 */
export async function query(
    container: string,
    user: string,
    sql: string,
    database = "postgres",
    socketDir?: string,
): Promise<string[][]> {
    const socket = socketDir ? ["-h", socketDir] : [];
    const { stdout } = await run("docker", [
        "exec",
        container,
        "psql",
        ...socket,
        ...psqlArgs(user, database),
        "-c",
        sql,
    ]);
    const text = stdout.replace(/\n$/, "");
    if (text === "") return [];
    return text.split(RECORD).map((r) => r.replace(/^\n/, "").split(FIELD));
}

/**
 * One query in every database that accepts connections, side by side: each database's rows. A database the
 * superuser cannot reach over the socket (a pg_hba.conf rule of the user's) is named in one sentence: the upgrade
 * reads every database so (the write horizon, verify), so it cannot go on without it.
 */
export async function queryEachDatabase(
    container: string,
    user: string,
    sql: string,
    socketDir?: string,
): Promise<{ database: string; rows: string[][] }[]> {
    const databases = (
        await query(
            container,
            user,
            "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1",
            "postgres",
            socketDir,
        )
    ).map(([d]) => d);
    const read = await Promise.allSettled(
        databases.map((database) => query(container, user, sql, database, socketDir)),
    );
    const unread = databases.filter((_, i) => read[i].status === "rejected");
    if (unread.length > 0) {
        const reason = ((read.find((r) => r.status === "rejected") as PromiseRejectedResult).reason as Error).message
            .trim()
            .split("\n")
            .pop();
        throw new StepError(
            `"${container}" refuses its superuser ${user} a local connection to the database(s) ${unread.join(", ")} (${reason}), and the upgrade reads every database so: allow it there in pg_hba.conf and run pulumi up again.`,
        );
    }
    return databases.map((database, i) => ({ database, rows: (read[i] as PromiseFulfilledResult<string[][]>).value }));
}

/**
 * Like query, for a script of several statements (and psql meta-commands) read from stdin: all their rows, and
 * psql's last stderr lines. psql ends each result with a newline instead of the record separator, so a newline
 * also ends a record here: for values without newlines (names, numbers, settings). A nested psql gets the same
 * separators with \pset fieldsep '\x1f' and recordsep '\x1e'.
 */
export async function queryScript(
    container: string,
    user: string,
    script: string,
    database = "postgres",
): Promise<{ rows: string[][]; stderr: string }> {
    const { stdout, stderr } = await run("docker", ["exec", "-i", container, "psql", ...psqlArgs(user, database)], {
        stdin: script,
    });
    return {
        rows: stdout
            .split(new RegExp(`${RECORD}|\n`))
            .filter((r) => r !== "")
            .map((r) => r.split(FIELD)),
        stderr,
    };
}

export async function serverVersion(container: string, user: string): Promise<{ text: string; major: number }> {
    const [[num, text]] = await query(
        container,
        user,
        "SELECT current_setting('server_version_num'), current_setting('server_version')",
    );
    return { text, major: Math.floor(Number(num) / 10000) };
}

/**
 * Waits until the server answers over TCP on 127.0.0.1 inside the container. During first start the image runs
 * a temporary server on the socket only, so a socket check (or pg_isready on the socket) says "ready" too early.
 */
export async function waitUntilAccepting(container: string, user: string, timeoutSeconds = 180): Promise<void> {
    const deadline = Date.now() + timeoutSeconds * 1000;
    let last = "";
    while (Date.now() < deadline) {
        const info = await inspectContainer(container);
        if (!info) throw new StepError(`The container "${container}" disappeared while starting.`);
        if (!info.running) {
            const logs = await containerLogTail(container);
            throw new StepError(`PostgreSQL in "${container}" stopped while starting: ${logs}`);
        }
        try {
            await run("docker", [
                "exec",
                container,
                "psql",
                "-X",
                "-h",
                "127.0.0.1",
                "-U",
                user,
                "-d",
                "postgres",
                "-Atc",
                "SELECT 1",
            ]);
            return;
        } catch (err) {
            last = (err as Error).message;
        }
        // Often: during an upgrade's downtime each wait for a server is on the clock (a check is ~0.07 s).
        await sleep(100);
    }
    throw new StepError(
        `PostgreSQL in "${container}" did not accept connections within ${timeoutSeconds} s (${last}).`,
    );
}

/** What psql says while a server is still starting (or not listening yet), as opposed to a real refusal. */
const NOT_YET_ACCEPTING =
    /starting up|not yet accepting|could not connect|Connection refused|No such file or directory/;

/**
 * Runs `work` against the container's server; when that fails because the server is not up yet, waits until it
 * accepts connections and runs it once more. For the first step that reads a server Pulumi may have just created
 * or started (it does not wait for health, see components/cluster.ts): free when the server is up, a clear
 * message when it never comes, and any other failure (a wrong role, say) reported at once.
 */
export async function whenAccepting<T>(container: string, user: string, work: () => Promise<T>): Promise<T> {
    try {
        return await work();
    } catch (err) {
        if (!(err instanceof ProcessError) || !NOT_YET_ACCEPTING.test(err.message)) throw err;
        await waitUntilAccepting(container, user, 120);
        return work();
    }
}

/** Quotes an SQL string literal (standard_conforming_strings, on by default since 9.1). */
export function quoteLiteral(text: string): string {
    return `'${text.replace(/'/g, "''")}'`;
}

/**
 * A database name as a libpq connection string, for every -d, --dbname and connection we make. libpq reads a bare
 * name holding "=" as a connection string (the class of CVE-2016-5424: a database named "host=elsewhere dbname=x"
 * would send our login elsewhere), and a name starting with "-" as a tool's option; inside a connection string
 * the value is only ever a name. Quoted as libpq's appendConnStrVal does.
 */
export function dbConninfo(database: string): string {
    return `dbname='${database.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

/** Quotes an SQL identifier the way PostgreSQL's quote_ident (and pg_dump's fmtId) does. */
export function quoteIdent(name: string): string {
    return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
}
