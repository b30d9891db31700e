// The staging container: the new cluster, initialised on the new data location and started for a restore or an
// upgrade, and what is set in it before Synapse logs in.
import { createHash, randomBytes } from "node:crypto";
import { query, quoteIdent, quoteLiteral, waitUntilAccepting } from "../docker/psql";
import { DataLocation, dataLayout, mountArgument } from "./layout";
import { run } from "../docker/process";
import { setPassword } from "../checks/password";
import { NO_ARCHIVING } from "../pg-upgrade/standby";
import { StepError } from "../step-error";
import { CLUSTER_LABEL, ourLabels } from "../names";

/**
 * md5 password hashes cannot log in through a scram-sha-256 access rule ("password authentication failed"; the
 * image's rule, until copy-config carries the old cluster's), and PostgreSQL 18 deprecates them, so the Synapse
 * role's md5 hash is replaced by a scram-sha-256 hash of the
 * configured password, after checking that the password is the one the md5 hash was made from. psql's \password
 * computes the scram verifier on the client and sends only that, so a server that logs statements (the carried
 * log_statement = ddl) never logs the password; psql reads it from stdin, never from argv.
 */
export async function rehashLoginRole(
    input: { container: string; password: string; loginUser?: string },
    superuser: string,
): Promise<string | undefined> {
    const role = input.loginUser ?? "synapse";
    const rows = await query(
        input.container,
        superuser,
        `SELECT rolpassword FROM pg_authid WHERE rolname = ${quoteLiteral(role)}`,
    );
    const hash = rows[0]?.[0] ?? "";
    if (!hash.startsWith("md5")) return undefined;
    if (
        hash !==
        "md5" +
            createHash("md5")
                .update(input.password + role)
                .digest("hex")
    ) {
        throw new StepError(
            `The role ${role} has an md5 password hash in the old cluster that postgres:password does not match, so it cannot be re-set as scram-sha-256; set postgres:password to the password Synapse uses.`,
        );
    }
    if (/[\r\n]/.test(input.password)) {
        throw new StepError(
            `The role ${role} has an md5 password hash and postgres:password holds a line break, which psql's \\password cannot read; set the role's password by hand as scram-sha-256 and run pulumi up again.`,
        );
    }
    await setPassword(input.container, superuser, role, input.password);
    const [[stored]] = await query(
        input.container,
        superuser,
        `SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = ${quoteLiteral(role)}`,
    );
    if (stored !== "SCRAM-SHA-256$")
        throw new StepError(
            `psql's \\password did not re-set the role ${role} as scram-sha-256; set its password by hand and run pulumi up again.`,
        );
    return role;
}

/** Prints how long each phase of a step took, so a slow upgrade says where its time went. */
export class PhaseClock {
    private last = Date.now();
    constructor(private readonly step: string) {}
    lap(what: string): void {
        const now = Date.now();
        process.stderr.write(`${this.step}: ${what} in ${((now - this.last) / 1000).toFixed(1)} s\n`);
        this.last = now;
    }
}

export interface StagingSpec {
    container: string;
    image: string;
    major: number;
    data: DataLocation;
    /** The old cluster's bootstrap superuser: the new one is bootstrapped as the same role. */
    superuser: string;
    /** The old cluster's template1 locale. */
    locale: { encoding: string; collate: string; ctype: string };
    /** More initdb arguments (data checksums for pg_upgrade). */
    initdbExtra?: string;
    mounts?: string[];
}

/**
 * Starts the staging container: the new image's own first start (initdb, its pg_hba rules) on the new data
 * location, with the old cluster's superuser and template1 locale, so postgres and template1 match too; returns
 * once it accepts connections.
 *
 * The image insists on a password to initialise, and keeps it in the container's environment (docker inspect).
 * The old cluster's roles replace the bootstrap role's password (the dump's ALTER ROLE, pg_upgrade's globals),
 * so it gets a random one used nowhere, cleared as soon as the server accepts: the superuser then has no password
 * until the old one's arrives, exactly as in the old cluster if it had none.
 */
export async function startStagingContainer(spec: StagingSpec): Promise<void> {
    const l = spec.locale;
    const initdbArgs = `--encoding=${l.encoding} --lc-collate=${l.collate} --lc-ctype=${l.ctype}${spec.initdbExtra ? ` ${spec.initdbExtra}` : ""}`;
    await run(
        "docker",
        [
            "run",
            "-d",
            "--name",
            spec.container,
            ...ourLabels("staging"),
            "--label",
            `${CLUSTER_LABEL}=${spec.major}`,
            // The old roles and databases come from the dump (or pg_upgrade): bootstrap only the superuser the
            // old cluster has (a dump's CREATE ROLE of it is filtered) and no extra database.
            "-e",
            `POSTGRES_USER=${spec.superuser}`,
            "-e",
            "POSTGRES_PASSWORD",
            "-e",
            "POSTGRES_DB=postgres",
            "-e",
            `POSTGRES_INITDB_ARGS=${initdbArgs}`,
            "-e",
            `PGDATA=${dataLayout(spec.major).pgdata}`,
            "--shm-size",
            "256m",
            "--stop-signal",
            "SIGINT",
            "-v",
            mountArgument(spec.data, spec.major),
            ...(spec.mounts ?? []).flatMap((m) => ["-v", m]),
            // A copy until the switch: it archives no WAL (standby.ts, NO_ARCHIVING), whatever the copied files say.
            spec.image,
            "postgres",
            ...NO_ARCHIVING,
        ],
        { env: { POSTGRES_PASSWORD: randomBytes(24).toString("base64url") } },
    );
    await waitUntilAccepting(spec.container, spec.superuser);
    await query(spec.container, spec.superuser, `ALTER ROLE ${quoteIdent(spec.superuser)} PASSWORD NULL`);
}
