// The stack's configuration (namespace `postgres:`), read once and validated before any resource is declared.
// Every error names the key, the value given and what would be accepted; all errors are reported together.
import * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import { DumpMethod } from "../runner/dump/dump";
import { sizeInBytes } from "../runner/config/server-command";
import { MIN_MAJOR } from "../runner/names";

export interface Version {
    /** As given: "17" or "17.6"; it fills `{version}` in the image template. */
    text: string;
    major: number;
}

export interface StackConfig {
    /** The major (or major.minor) that serves Synapse. */
    version: Version;
    /**
     * The version migrated from (major, or major.minor as it ran, so the old container is declared unchanged),
     * while an upgrade is in progress or until the old cluster is retired.
     */
    upgradeFrom?: Version;
    /** Image template; `{version}` and `{major}` are filled per cluster. */
    image: string;
    /** Exact image for the old cluster (e.g. pinned by digest); default: the template with the old major. */
    upgradeFromImage?: string;
    /** Host folder holding `pgsql<major>` bind mounts; without it, named volumes `synapse-pgsql<major>`. */
    dataRoot?: string;
    /** Defaults: synapse, synapse, synapse, db, or, with adopt, what the adopted container uses. */
    user?: string;
    database?: string;
    network?: string;
    hostAlias?: string;
    /** An existing PostgreSQL container (e.g. docker compose's) to upgrade from; never created, replaced or deleted. */
    adopt?: string;
    /** Host folder for dumps; required while upgradeFrom is set. */
    backupDir?: string;
    /** A folder on the machine that runs pulumi up for a second copy of each dump, checked against its sha256. */
    backupCopyDir?: string;
    /**
     * How the data moves: pg_upgrade (pg_upgrade --link on a standby copy made before the downtime, or --copy of
     * the old data; the fastest), directory (parallel dump and restore) or dumpall (the guide's single script).
     * Unset: pg_upgrade, or the method of an upgrade already under way (resolved in stack.ts).
     */
    method?: DumpMethod | "pg_upgrade";
    /** Synapse's containers (main and workers): stopped for the upgrade, started after the switch or a failure. */
    synapseContainers: string[];
    /** Only rehearse the upgrade (on a stack of its own): nothing else is declared. */
    rehearse: boolean;
    /** Events written to the newer cluster since the switch that a revert may lose (explicit confirmation). */
    revertAcceptLoss: number | "any";
    /** Bumped by the user to run an upgrade again from a fresh dump (every step's trigger). */
    attempt: number;
    /** Publish 5432 of the serving cluster on 127.0.0.1:<port> (never on other addresses). */
    port?: number;
    /** Container names are `<prefix><major>`. */
    containerPrefix: string;
    /** initdb arguments for a first deployment; Synapse needs UTF8 with C collation. */
    initdbArgs: string;
    /**
     * PostgreSQL settings for the cluster that serves (postgres:settings, a map), given to its server as `-c`
     * options: they win over postgresql.conf and ALTER SYSTEM. Sorted by name, values as text.
     */
    settings: Record<string, string>;
    /**
     * Parameters the user agrees to leave out of the new cluster when its server rejects them (as copy-config
     * reported them); the old cluster keeps them.
     */
    dropSettings: string[];
    /** Access rules (`pg_hba.conf:<line>` of the old cluster) the user agrees to leave out when the new server rejects them. */
    dropAccessRules: string[];
    /** The bootstrap superuser's (and Synapse's) password: a secret all the way to the container. */
    password: pulumi.Output<string>;
    /** docker:host, given to every step as DOCKER_HOST; unset: the docker CLI's own (DOCKER_HOST, context). */
    dockerHost?: string;
}

/** Current Synapse releases need PostgreSQL 14 or newer. */

/**
 * Settings this program decides for every cluster: where the data is, where it listens, where the files are.
 * Changing them through postgres:settings would break the healthcheck, the steps or Synapse's connection.
 */
export const OWNED_SETTINGS: Record<string, string> = {
    listen_addresses: "Synapse and the healthcheck reach the server over the Docker network",
    port: "the container's port 5432 is what Synapse, the healthcheck and postgres:port use",
    unix_socket_directories: "the steps talk to the server through its socket",
    data_directory: "the data location is decided by postgres:dataRoot and the image",
    config_file: "the configuration files live in the data location",
    hba_file: "the configuration files live in the data location",
    ident_file: "the configuration files live in the data location",
    external_pid_file: "the container's process is the server itself",
};

const SETTING_NAME = /^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?$/;
const dockerName = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
const sqlName = /^[a-z_][a-z0-9_]*$/;
const imageRef = /^[a-z0-9][a-z0-9._/:{}@-]*$/i;

const schema = z
    .object({
        version: z
            .string({ required_error: "is required: the major (17) or major.minor (17.6) that serves Synapse" })
            .regex(/^\d+(\.\d+)?$/, "must be a major like 17 or a major.minor like 17.6")
            .refine(
                (v) => !/^\d+(\.\d+)?$/.test(v) || Number(v.split(".")[0]) >= MIN_MAJOR,
                `must be ${MIN_MAJOR} or newer: current Synapse refuses older PostgreSQL`,
            ),
        upgradeFrom: z
            .string()
            .regex(/^\d+(\.\d+)?$/, "must be the version the old cluster runs, like 15 or 15.8")
            .refine(
                (v) => !/^\d+(\.\d+)?$/.test(v) || Number(v.split(".")[0]) >= 10,
                "must be 10 or newer (what this tool can dump and restore)",
            )
            .optional(),
        image: z
            .string()
            .regex(imageRef, "must be an image reference like postgres:{version}-alpine or postgres@sha256:<digest>")
            .default("postgres:{version}-alpine"),
        upgradeFromImage: z
            .string()
            .regex(imageRef, "must be an image reference like postgres:15-alpine or postgres@sha256:<digest>")
            .optional(),
        dataRoot: z
            .string()
            .regex(/^\/[^\s:]*$/, "must be an absolute host folder without spaces or colons, like /srv/synapse")
            .optional(),
        user: z.string().regex(sqlName, "must be a lower-case PostgreSQL role name like synapse").optional(),
        database: z.string().regex(sqlName, "must be a lower-case database name like synapse").optional(),
        network: z.string().regex(dockerName, "must be a Docker network name like synapse_default").optional(),
        hostAlias: z.string().regex(dockerName, "must be a host name like db").optional(),
        adopt: z
            .string()
            .regex(dockerName, "must be the name of a running container, as `docker ps` shows it, like synapse-db-1")
            .optional(),
        backupDir: z
            .string()
            .regex(/^\/[^\s:]*$/, "must be an absolute host folder without spaces or colons, like /srv/synapse/backups")
            .optional(),
        backupCopyDir: z
            .string()
            .regex(
                /^\/[^\s:]*$/,
                "must be an absolute folder on the machine that runs pulumi up, without spaces or colons, like /home/admin/synapse-dumps",
            )
            .optional(),
        // No default here: unset means pg_upgrade for a new upgrade, and the method of an upgrade already under way
        // (stack.ts asks the step runner), so that stacks mid-upgrade under the old default are not re-planned.
        method: z
            .enum(["pg_upgrade", "directory", "dumpall"], {
                errorMap: () => ({
                    message:
                        "must be pg_upgrade (copy the data files), directory (parallel dump and restore) or dumpall (the guide's single script)",
                }),
            })
            .optional(),
        synapseContainers: z
            .string()
            .transform((v) => parseList(v))
            .refine(
                (list) => list !== undefined && list.every((n) => dockerName.test(n)),
                "must be container names, comma-separated or a JSON list, like synapse,synapse-worker1",
            )
            .optional(),
        rehearse: z
            .enum(["true", "false"], { errorMap: () => ({ message: "must be true or false" }) })
            .default("false"),
        revertAcceptLoss: z
            .string()
            .regex(
                /^(\d+|any)$/,
                "must be the number of events the revert may lose, as the refused revert reported it, like 42, or any when they cannot be counted",
            )
            .default("0"),
        attempt: z
            .string()
            .regex(/^[1-9]\d*$/, "must be a whole number from 1 (bump it to run the upgrade again from a fresh dump)")
            .default("1"),
        port: z
            .string()
            .regex(/^\d+$/, "must be a TCP port number")
            .refine(
                (v) => !/^\d+$/.test(v) || (Number(v) >= 1 && Number(v) <= 65535),
                "must be a TCP port from 1 to 65535",
            )
            .optional(),
        containerPrefix: z
            .string()
            .regex(dockerName, "must be a Docker container name prefix like synapse-pg")
            .default("synapse-pg"),
        initdbArgs: z.string().default("--encoding=UTF8 --locale=C"),
        dropSettings: z
            .string()
            .transform((v) => parseList(v))
            .refine(
                (list) => list !== undefined && list.every((n) => SETTING_NAME.test(n)),
                "must be PostgreSQL parameter names, comma-separated, as copy-config named them, like wal_keep_segments,stats_temp_directory",
            )
            .optional(),
        dropAccessRules: z
            .string()
            .transform((v) => parseList(v))
            .refine(
                (list) => list !== undefined && list.every((n) => /^pg_(hba|ident)\.conf:[1-9]\d*$/.test(n)),
                "must be access rules as copy-config named them, <file>:<line> of the old cluster, comma-separated, like pg_hba.conf:98",
            )
            .optional(),
        settings: z
            .string()
            .superRefine((text, ctx) => {
                for (const message of settingsProblems(text)) ctx.addIssue({ code: "custom", message });
            })
            .optional(),
    })
    .superRefine((c, ctx) => {
        if (c.rehearse === "true" && c.upgradeFrom === undefined && c.adopt === undefined) {
            ctx.addIssue({
                code: "custom",
                path: ["rehearse"],
                message:
                    "needs the cluster to rehearse from: set postgres:upgradeFrom (or postgres:adopt) and postgres:version",
            });
        }
        const major = Number(c.version.split(".")[0]);
        if (c.upgradeFrom !== undefined && /^\d+(\.\d+)?$/.test(c.upgradeFrom)) {
            const from = Number(c.upgradeFrom.split(".")[0]);
            if (from === major) {
                ctx.addIssue({
                    code: "custom",
                    path: ["upgradeFrom"],
                    message: `is the same major as postgres:version; a minor change needs no upgradeFrom: remove it`,
                });
            } else if (from > major) {
                ctx.addIssue({
                    code: "custom",
                    path: ["upgradeFrom"],
                    message: `is newer than postgres:version ${c.version}: a downgrade is not a revert; to go back, restore the earlier config (version ${from}, no upgradeFrom)`,
                });
            }
            if (c.adopt !== undefined) {
                ctx.addIssue({
                    code: "custom",
                    path: ["upgradeFrom"],
                    message:
                        "is read from the adopted container (postgres:adopt), which knows its own version: remove upgradeFrom",
                });
            }
            if (
                c.backupDir === undefined &&
                c.rehearse !== "true" &&
                (c.method === "directory" || c.method === "dumpall")
            ) {
                ctx.addIssue({
                    code: "custom",
                    path: ["backupDir"],
                    message: `is required while postgres:upgradeFrom is set with method ${c.method}: the host folder the dump is written to`,
                });
            }
            if (
                c.image.includes("@") &&
                !c.image.includes("{") &&
                c.upgradeFromImage === undefined &&
                c.adopt === undefined
            ) {
                ctx.addIssue({
                    code: "custom",
                    path: ["upgradeFromImage"],
                    message:
                        "is required when postgres:image pins one digest: that image holds one major only, so name the old cluster's image too",
                });
            }
        }
    });

export type RawConfig = Partial<Record<keyof z.input<typeof schema>, string>>;

/** The keys this program reads, in the order they are documented. */
export const CONFIG_KEYS = Object.keys(schema._def.schema.shape) as (keyof RawConfig)[];

/** Validates raw config strings; throws one Error listing every problem. */
export function parseConfig(
    raw: RawConfig,
    password: pulumi.Output<string> | undefined,
    unknownKeys: string[] = [],
    dockerHost?: string,
): StackConfig {
    const result = schema.safeParse(raw);
    const problems = [
        ...unknownKeys.map(
            (k) =>
                `${k} is not a setting of this program (a typo?); the postgres: keys are ${[...CONFIG_KEYS, "password"].join(", ")}`,
        ),
        ...[dockerHostProblem(dockerHost)].filter((p): p is string => p !== undefined),
        ...(result.success ? [] : result.error.issues.map((issue) => schemaProblem(raw, issue))),
    ];
    if (password === undefined) {
        problems.push(
            "postgres:password is required: set it with `pulumi config set --secret postgres:password <password>`",
        );
    }
    if (problems.length > 0) {
        throw new Error(`Invalid stack configuration:\n  - ${problems.join("\n  - ")}`);
    }
    const c = result.data!;
    return Object.freeze({
        version: { text: c.version, major: Number(c.version.split(".")[0]) },
        upgradeFrom:
            c.upgradeFrom === undefined
                ? undefined
                : { text: c.upgradeFrom, major: Number(c.upgradeFrom.split(".")[0]) },
        image: c.image,
        upgradeFromImage: c.upgradeFromImage,
        dataRoot: c.dataRoot,
        user: c.user,
        database: c.database,
        network: c.network,
        hostAlias: c.hostAlias,
        adopt: c.adopt,
        backupDir: c.backupDir,
        backupCopyDir: c.backupCopyDir,
        method: c.method,
        synapseContainers: c.synapseContainers ?? [],
        attempt: Number(c.attempt),
        revertAcceptLoss: c.revertAcceptLoss === "any" ? "any" : Number(c.revertAcceptLoss),
        rehearse: c.rehearse === "true",
        port: c.port === undefined ? undefined : Number(c.port),
        containerPrefix: c.containerPrefix,
        initdbArgs: c.initdbArgs,
        settings: c.settings === undefined ? {} : parseSettings(c.settings)!,
        dropSettings: c.dropSettings ?? [],
        dropAccessRules: c.dropAccessRules ?? [],
        password: password!,
        dockerHost: dockerHost || undefined,
    });
}

/** Reads `postgres:*` from the stack. Unknown `postgres:` keys are refused, so a typo is not silently ignored. */
export function readConfig(): StackConfig {
    const cfg = new pulumi.Config("postgres");
    const raw: RawConfig = {};
    for (const key of CONFIG_KEYS) {
        const value = cfg.get(key);
        if (value !== undefined) raw[key] = value;
    }
    const known = new Set([...CONFIG_KEYS, "password"].map((k) => `postgres:${k}`));
    const unknown = Object.keys(pulumi.runtime.allConfig()).filter((k) => k.startsWith("postgres:") && !known.has(k));
    return parseConfig(raw, cfg.getSecret("password"), unknown, new pulumi.Config("docker").get("host"));
}

function schemaProblem(raw: RawConfig, issue: z.ZodIssue): string {
    const key = String(issue.path[0]);
    const given = raw[key as keyof RawConfig];
    return `postgres:${key}${given === undefined ? "" : ` is "${given}" but`} ${issue.message.replace(/^is /, given === undefined ? "is " : "")}`;
}

/**
 * The Docker provider's docker:host, which every step is given as DOCKER_HOST: this machine's socket, or another
 * machine's engine over SSH or TCP (the steps then reach its folders through it, runner/host/choose.ts).
 */
function dockerHostProblem(host: string | undefined): string | undefined {
    if (!host || /^(unix|ssh|tcp):\/\/./.test(host)) return undefined;
    return `docker:host is "${host}" but it must be a unix://, ssh:// or tcp:// address of a Docker engine (for example ssh://admin@matrix.example.org)`;
}

/** "a,b" or '["a","b"]' (what `pulumi config set --path` writes) into names; undefined when unreadable. */
function parseList(text: string): string[] | undefined {
    if (text.trim().startsWith("[")) {
        try {
            const list = JSON.parse(text);
            return Array.isArray(list) && list.every((x) => typeof x === "string") ? list : undefined;
        } catch {
            return undefined;
        }
    }
    return text
        .split(",")
        .map((x) => x.trim())
        .filter(Boolean);
}

/** Fills the image template for one cluster. */
export function imageFor(template: string, version: string): string {
    return template.replace(/\{version\}/g, version).replace(/\{major\}/g, version.split(".")[0]);
}

/**
 * postgres:settings as `pulumi config set --path 'postgres:settings.shared_buffers' 1GB` writes it (a JSON
 * object), or a JSON object given whole. Undefined when it is not an object of plain values.
 */
function parseSettings(text: string): Record<string, string> | undefined {
    let value: unknown;
    try {
        value = JSON.parse(text);
    } catch {
        return undefined;
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
    const entries = Object.entries(value as Record<string, unknown>);
    if (!entries.every(([, v]) => ["string", "number", "boolean"].includes(typeof v))) return undefined;
    return Object.fromEntries(entries.map(([k, v]) => [k, String(v)]).sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** What is wrong with postgres:settings, one message per problem; the values themselves are checked by the server. */
function settingsProblems(text: string): string[] {
    const settings = parseSettings(text);
    if (settings === undefined) {
        return [
            "must be a map of PostgreSQL settings, set one at a time with `pulumi config set --path 'postgres:settings.shared_buffers' 1GB`",
        ];
    }
    const problems: string[] = [];
    for (const [name, value] of Object.entries(settings)) {
        if (!SETTING_NAME.test(name))
            problems.push(`has "${name}", which is not a PostgreSQL parameter name (lower case, like work_mem)`);
        else if (OWNED_SETTINGS[name])
            problems.push(`has ${name}, which this program sets itself: ${OWNED_SETTINGS[name]}; remove it`);
        if (/[\n\r\0]/.test(value) || value.trim() === "")
            problems.push(`has ${name} = "${value}", which must be one non-empty line`);
    }
    if (settings.shared_buffers !== undefined && sizeInBytes(settings.shared_buffers) === undefined) {
        problems.push(
            `has shared_buffers = "${settings.shared_buffers}", which must be a size like 512MB or 2GB (the container's shared memory follows it)`,
        );
    }
    return problems;
}
