// synapse-pg: the step runner's command line. Each subcommand parses its flags, calls one step function and
// prints its result on stdout (dump: the dump's path as the last line). Failures print one sentence on stderr and
// exit 1. Passwords come only from the environment (SYNAPSE_PG_PASSWORD), never from a flag.
import { copyConfig, CopyConfigResult, describeRejected } from "./copy-config";
import { cutover } from "./cutover";
import { DUMP_METHODS, DumpMethod, dumpCluster, formatBytes } from "./dump";
import { parseDataLocation } from "./layout";
import { inspectAdopted } from "./inspect";
import { methodUnderway } from "./method-underway";
import { preflight } from "./preflight";
import { rehearse } from "./rehearse";
import { ProcessError } from "./process";
import { restoreCluster } from "./restore";
import { serveCluster } from "./serve";
import { preparePgUpgrade, runPgUpgrade } from "./pg-upgrade";
import { describeCarried } from "./not-replicated";
import { checkSettings } from "./settings";
import { stopSynapseBeforeReplace } from "./before-replace";
import { StepError } from "./step-error";
import { describeFence, Fence, liftFence } from "./fence";
import { describeUpdates } from "./extensions";
import { advanceMarker, readMarkerIn, writeMarkerIn } from "./target";
import { formatReport, verifyClusters } from "./verify";
import { requireContainer, resumeStaging, superuserOf } from "./docker";
import { removeStandby, standbyContainerName } from "./standby";
import { parseContainerList, requireCopyAfterSynapse, startSynapse, stopSynapse } from "./synapse";
import { PASSWORD_ENV } from "./names";

type Flags = Record<string, string | boolean>;

interface Subcommand {
    summary: string;
    /** Takes --synapse: stop those containers first; before the switch, start them again if the step fails. */
    stopsSynapse?: "before" | "around";
    /** The flag naming the old cluster's container: a failure lifts its write fence (fence.ts) before Synapse starts. */
    oldCluster?: string;
    /** flag name -> description; a name ending in "?" is optional, "!" is a boolean switch. */
    flags: Record<string, string>;
    run(flags: Flags, out: (line: string) => void): Promise<void>;
}

function str(flags: Flags, name: string): string {
    return flags[name] as string;
}

function int(flags: Flags, name: string): number {
    const n = Number(flags[name]);
    if (!Number.isInteger(n) || n <= 0) throw new StepError(`--${name} must be a whole number, not "${flags[name]}".`);
    return n;
}

function int0(flags: Flags, name: string): number {
    const n = Number(flags[name]);
    if (!Number.isInteger(n) || n < 0) throw new StepError(`--${name} must be a whole number from 0, not "${flags[name]}".`);
    return n;
}

/** --settings: the JSON map the program passes (postgres:settings). */
function settingsFlag(flags: Flags): Record<string, string> {
    if (flags.settings === undefined) return {};
    try {
        const value = JSON.parse(flags.settings as string);
        if (typeof value === "object" && value !== null && !Array.isArray(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, String(v)]));
    } catch {
        // reported below
    }
    throw new StepError(`--settings must be a JSON object of PostgreSQL settings, like {"work_mem":"16MB"}, not "${flags.settings}".`);
}

/** --drop (postgres:dropSettings) or --drop-access-rules (postgres:dropAccessRules), comma-separated. */
function listFlag(flags: Flags, name: "drop" | "drop-access-rules"): string[] {
    return ((flags[name] as string | undefined) ?? "").split(",").map((n) => n.trim()).filter(Boolean);
}

/** The configuration's flags, shared by copy-config and prepare. */
function configInput(f: Flags) {
    return { settings: settingsFlag(f), drop: listFlag(f, "drop"), dropAccessRules: listFlag(f, "drop-access-rules") };
}

const CONFIG_FLAGS = {
    "drop?": "parameters (comma-separated) to leave out of the new cluster if its server rejects them (postgres:dropSettings)",
    "drop-access-rules?": "access rules as <file>:<line> of the old cluster (comma-separated) to leave out of the new cluster if its server rejects them (postgres:dropAccessRules)",
};

/** "a", "a and b", "a, b and c". */
function listed(items: string[]): string {
    return items.length <= 1 ? items.join("") : `${items.slice(0, -1).join(", ")} and ${items[items.length - 1]}`;
}

/** What copy-config did, in its words; also what prepare says after it carried the configuration across. */
function reportConfig(step: string, r: CopyConfigResult, out: (line: string) => void): void {
    for (const d of r.dropped) {
        const key = /^pg_(hba|ident)\.conf$/.test(d.file) ? "postgres:dropAccessRules" : "postgres:dropSettings";
        out(`${step}: left out of the new cluster, as ${key} allows: ${describeRejected(d)}; the old cluster keeps it.`);
    }
    out(r.copied.length === 0
        ? `${step}: ${listed(r.unchanged)} already in place; nothing to do.`
        : `${step}: copied ${listed(r.copied)}; the new server accepted every setting${r.restarted ? " and restarted with them" : " (applied by reload, no restart needed)"}.`);
    if (r.archivesAfterSwitch) out(`${step}: the old cluster archives WAL (archive_mode=${r.archivesAfterSwitch}); the copies made for the upgrade archive nothing, but after the switch the new cluster archives with the same archive_command: a new major needs an archive of its own (a new pgBackRest stanza, another folder), so point it elsewhere with postgres:settings before the switch.`);
    out(`${step}: the server the switch will create (the new image, this configuration, postgres:settings) started and stopped cleanly in a throw-away container.`);
    if (r.declared) out(`${step}: the new server accepts postgres:settings (${Object.entries(r.declared).map(([k, v]) => `${k}=${v}`).join(", ")}); its container starts with them after the switch.`);
}

function pgUpgradeInput(f: Flags) {
    return {
        container: str(f, "container"), staging: str(f, "staging"), image: str(f, "image"),
        data: parseDataLocation(str(f, "data")), major: int(f, "major"), password: password(true)!,
        loginUser: (f["login-user"] as string) ?? "synapse",
        ...configInput(f),
    };
}

function password(required: boolean): string | undefined {
    const pw = process.env[PASSWORD_ENV];
    if (required && !pw) throw new StepError(`Set ${PASSWORD_ENV} in the environment to the database password; it is never taken from the command line.`);
    return pw || undefined;
}

export const SUBCOMMANDS: Record<string, Subcommand> = {
    rehearse: {
        summary: "Run the whole upgrade on a throw-away copy while Synapse keeps serving; report time and problems.",
        flags: {
            container: "the old cluster's container (live; only read)",
            to: "the major to rehearse the upgrade to",
            "image?": "the target image (default: the old image's tag with the major replaced)",
            "backup-dir?": "the real run's backup folder, to check its free space",
            "login-user?": "the role Synapse logs in as (default synapse)",
            "login-database?": "its database (default synapse)",
            "method?": "pg_upgrade to rehearse the physical upgrade on a copy made with pg_basebackup (default: the dump method)",
            "keep!": "leave the rehearsal's container running and print its name",
            "json!": "print the report as JSON",
        },
        async run(f, out) {
            const r = await rehearse({
                container: str(f, "container"), to: int(f, "to"), image: f.image as string | undefined, keep: f.keep === true,
                password: password(true)!, loginUser: (f["login-user"] as string) ?? "synapse",
                loginDatabase: (f["login-database"] as string) ?? "synapse", backupDir: f["backup-dir"] as string | undefined,
                physical: f.method === "pg_upgrade",
            });
            if (f.json) return out(JSON.stringify(r, null, 2));
            out(`rehearse: ${r.source.container} (PostgreSQL ${r.source.version}, ${formatBytes(r.source.databasesBytes)}) -> ${r.target.image} (PostgreSQL ${r.target.version})`);
            out(`rehearse: ${Object.entries(r.timings).map(([k, v]) => `${k} ${v.toFixed(1)} s`).join(", ")}`);
            out(`rehearse: predicted downtime of the real upgrade: about ${Math.ceil(r.predictedDowntimeSeconds)} s (${r.method === "pg_upgrade" ? (r.pgUpgradeVia === "link" ? "pg_upgrade --link on a standby" : "pg_upgrade --copy") : `dump ${formatBytes(r.dumpBytes)}`})`);
            if (r.liveWrites.length) out(`rehearse: ${r.liveWrites.length} table(s) grew during the rehearsal (Synapse kept writing), as expected`);
            for (const p of r.problems) out(`rehearse: problem: ${p}`);
            out(r.verified && r.problems.length === 0 ? "rehearse: no problems found." : `rehearse: ${r.problems.length} problem(s) to fix before the real upgrade.`);
            if (r.target.kept) out(`rehearse: kept ${r.target.container} running`);
        },
    },
    "method-underway": {
        summary: "Say, changing nothing, which method an upgrade already under way uses (JSON; method null when none is).",
        flags: {
            data: "the new cluster's volume name or absolute host folder",
            major: "the new major",
            image: "the new major's image (reads the data location)",
            "backup-dir?": "the backup folder a dump method writes to",
            "name?": "the dump's name in it",
        },
        async run(f, out) {
            out(JSON.stringify(await methodUnderway({
                data: parseDataLocation(str(f, "data")), major: int(f, "major"), image: str(f, "image"),
                backupDir: f["backup-dir"] as string | undefined, dumpName: f.name as string | undefined,
            })));
        },
    },
    inspect: {
        summary: "Read, changing nothing, what an existing PostgreSQL container (postgres:adopt) is: major, data, network, alias.",
        flags: { container: "the container to adopt" },
        async run(f, out) {
            out(JSON.stringify(await inspectAdopted(str(f, "container"))));
        },
    },
    prepare: {
        summary: "pg_upgrade method, while Synapse still runs: unpack the old image's binaries, prove they run, initialise the new cluster.",
        flags: {
            container: "the old cluster's container (live; only read)",
            staging: "the staging container to create (stopped when done)",
            image: "the new major's image",
            data: "the new cluster's volume name or absolute host folder",
            major: "the new major",
            "settings?": "postgres:settings as a JSON object: checked against the copied files, before the downtime",
            ...CONFIG_FLAGS,
        },
        async run(f, out) {
            const r = await preparePgUpgrade(pgUpgradeInput(f));
            if (r.config) reportConfig("prepare", r.config, out);
            if (r.extensionUpdates.length) out(`prepare: pg_upgrade keeps each extension's version; serve updates these once the new cluster serves: ${describeUpdates(r.extensionUpdates)}.`);
            if (r.setAsideTo) out(`prepare: the earlier ${str(f, "major")} cluster, which served Synapse before a revert, was kept at ${r.setAsideTo}`);
            out(`prepare: ${r.binaries.version} runs inside ${str(f, "image")} from ${r.binaries.volume}; ${r.reused ? "the new cluster was already prepared" : "new cluster initialised"} in "${str(f, "staging")}" (stopped).`);
            out(r.standby
                ? `prepare: the standby "${r.standby}" streams from "${str(f, "container")}"; the upgrade will link its files, not copy the old data while Synapse is down${r.unlogged ? `; ${r.unlogged}, which a standby holds empty: the upgrade copies what they hold once Synapse has stopped` : ""}.`
                : `prepare: no standby (${r.noStandby}); the upgrade will copy the old data while Synapse is down.`);
        },
    },
    "remove-standby": {
        summary: "pg_upgrade method: remove the standby prepare made (the prepare resource's delete: an upgrade given up, or pulumi destroy).",
        flags: {
            staging: "the staging container prepare made; its standby is <staging>-standby",
        },
        async run(f, out) {
            const name = standbyContainerName(str(f, "staging"));
            const existed = await removeStandby(name);
            out(existed
                ? `remove-standby: the standby "${name}" was removed; the old cluster was only read by it and is unchanged.`
                : `remove-standby: there is no standby "${name}"; nothing to do.`);
        },
    },
    upgrade: {
        stopsSynapse: "before",
        oldCluster: "container",
        summary: "pg_upgrade method: pg_upgrade --link on the prepared standby (or, without one, --copy of the stopped old cluster) into the new cluster.",
        flags: {
            container: "the old cluster's container",
            staging: "the prepared staging container",
            image: "the new major's image",
            data: "the new cluster's volume name or absolute host folder",
            major: "the new major",
            "login-user?": "the role Synapse logs in as (default synapse): re-set as scram-sha-256 if its hash is md5",
        },
        async run(f, out) {
            const r = await runPgUpgrade(pgUpgradeInput(f));
            if (r.fence) out(fenceLine("upgrade", str(f, "container"), r.fence));
            if (r.rehashed) out(`upgrade: the role ${r.rehashed} had an md5 password hash; it was re-set as scram-sha-256 from the configured password.`);
            if (r.carried) out(`upgrade: ${describeCarried(r.carried)}.`);
            out(r.alreadyDone
                ? `upgrade: "${str(f, "staging")}" already holds the upgraded cluster; nothing to do.`
                : r.via === "link"
                    ? `upgrade: pg_upgrade --link on the standby of "${str(f, "container")}" into "${str(f, "staging")}" in ${r.seconds.toFixed(1)} s; the old cluster was never stopped and is unchanged.`
                    : `upgrade: pg_upgrade --copy from "${str(f, "container")}" into "${str(f, "staging")}" in ${r.seconds.toFixed(1)} s; the old cluster is unchanged and running again.`);
        },
    },
    preflight: {
        stopsSynapse: "before",
        oldCluster: "container",
        summary: "Check, changing nothing, that the old cluster can be upgraded now.",
        flags: {
            container: "the old cluster's container",
            "target-major": "the major to upgrade to",
            "target-image": "the image of the new major",
            "target-data": "the new cluster's volume name or absolute host folder",
            "backup-dir?": "where the dump will go, to check its free space",
            "staging?": "the staging container prepare made (method pg_upgrade), read instead of the data location",
            "login-user?": `the role Synapse logs in as: with ${PASSWORD_ENV} set, its login to the old cluster is checked`,
            "login-database?": "the database Synapse logs in to (default synapse)",
            "json!": "print the result as JSON",
        },
        async run(f, out) {
            const pw = password(false);
            const login = pw && f["login-user"] !== undefined ? { user: str(f, "login-user"), database: (f["login-database"] as string) ?? "synapse", password: pw } : undefined;
            const r = await preflight({
                login,
                container: str(f, "container"),
                targetMajor: int(f, "target-major"),
                targetImage: str(f, "target-image"),
                targetData: parseDataLocation(str(f, "target-data")),
                backupDir: f["backup-dir"] as string | undefined,
                staging: f.staging as string | undefined,
            });
            if (f.json) return out(JSON.stringify(r, null, 2));
            if (r.alreadyUpgraded) return out(`preflight: "${str(f, "container")}" was already switched to ${str(f, "target-major")}; nothing to check.`);
            if (r.createdBackupDir) out(`preflight: created the backup folder ${str(f, "backup-dir")} (mode 0700: the dump holds every role's password hash).`);
            out(`preflight: "${str(f, "container")}" runs PostgreSQL ${r.sourceVersion}, ${formatBytes(r.databasesBytes)} of databases, no other clients; new data location: ${r.target}. Ready.`);
            if (r.md5Roles.length) {
                out(`preflight: warning: ${r.md5Roles.join(", ")} ha${r.md5Roles.length === 1 ? "s" : "ve"} an md5 password hash, which a scram-sha-256 access rule refuses and PostgreSQL 18 deprecates; the Synapse role is re-set as scram-sha-256 after the restore; for any other, run \\password <name> in psql on the new cluster (psql sends the server only the scram hash).`);
            }
        },
    },
    dump: {
        stopsSynapse: "before",
        oldCluster: "container",
        summary: "Dump every database, roles and password hashes included, into a 0600 file with a manifest.",
        flags: {
            container: "the old cluster's container",
            out: "the backup folder",
            "name?": "the dump's name, without extension (default: the container's name)",
            "method?": "directory (default: pg_dump -Fd per database, restored in parallel) or dumpall (one pg_dumpall script, the guide's)",
            "tool-image?": "image whose pg_dump to use (default: the old container's)",
        },
        async run(f, out) {
            const method = (f.method ?? "directory") as DumpMethod;
            if (!DUMP_METHODS.includes(method)) throw new StepError(`--method must be ${DUMP_METHODS.join(" or ")}, not "${method}".`);
            const r = await dumpCluster({
                container: str(f, "container"),
                outDir: str(f, "out"),
                name: f.name as string | undefined,
                method,
                toolImage: f["tool-image"] as string | undefined,
                password: password(false),
                fence: true,
            });
            if (r.fence) out(fenceLine("dump", str(f, "container"), r.fence));
            out(`dump: ${formatBytes(r.manifest.bytes)} from PostgreSQL ${r.manifest.source.version}, sha256 ${r.manifest.sha256}`);
            if (r.manifest.source.pinned) out(`dump: the old cluster runs image ${r.manifest.source.pinned}; a revert is checked to run exactly this one.`);
            out(r.path);
        },
    },
    restore: {
        stopsSynapse: "before",
        oldCluster: "old",
        summary: "Load a dump into a staging container of the new major on the new data location.",
        flags: {
            container: "the staging container to create",
            image: "the new major's image",
            data: "the new cluster's volume name or absolute host folder",
            major: "the new major",
            in: "the dump written by the dump step (<name>.sql or the <name> folder)",
            "old?": "the old cluster's container, fenced since the dump: if the restore fails it takes connections again",
            "login-user?": "the role Synapse logs in as (default synapse): re-set as scram-sha-256 if its hash is md5",
        },
        async run(f, out) {
            const r = await restoreCluster({
                container: str(f, "container"),
                image: str(f, "image"),
                data: parseDataLocation(str(f, "data")),
                major: int(f, "major"),
                dumpPath: str(f, "in"),
                password: password(true)!,
                loginUser: (f["login-user"] as string) ?? "synapse",
            });
            if (r.rehashed) out(`restore: the role ${r.rehashed} had an md5 password hash; it was re-set as scram-sha-256 from the configured password.`);
            if (r.filtered?.attverOptionsDropped) {
                out(`restore: dropped ${r.filtered.attverOptionsDropped} internal pg_attver column markers of the old server, which PostgreSQL ${str(f, "major")} does not accept.`);
            }
            if (r.setAsideTo) out(`restore: the earlier ${str(f, "major")} cluster, which served Synapse before a revert, was kept at ${r.setAsideTo}`);
            out(r.alreadyRestored
                ? `restore: "${str(f, "container")}" already holds this dump (sha256 ${r.manifest.sha256}); nothing to do.`
                : `restore: loaded ${formatBytes(r.manifest.bytes)} into "${str(f, "container")}".`);
        },
    },
    "before-replace": {
        summary: "Before Pulumi replaces the serving container (minor update, new settings, new data location): refuse an empty data location; stop Synapse, serve starts it again.",
        flags: {
            container: "the serving container",
            image: "the image the stack now declares for it",
            "command?": "the server command the stack now declares (JSON list), when postgres:settings are set",
            "data?": "the data location the stack now declares (volume name or absolute host folder); an empty one is refused",
            "major?": "the cluster's major (where its image keeps the data), with --data",
            "port?": "the host port the stack now publishes 5432 on (empty: none)",
            "network?": "the Docker network the stack now declares", "alias?": "the host name on it",
            "user?": "the bootstrap superuser the stack now declares", "database?": "the database the stack now declares",
            "synapse?": "Synapse's containers, comma-separated",
        },
        async run(f, out) {
            let command: string[] | undefined;
            if (f.command !== undefined) {
                try {
                    command = JSON.parse(str(f, "command"));
                } catch {
                    throw new StepError(`--command must be a JSON list like ["postgres","-c","work_mem=16MB"], not "${f.command}".`);
                }
            }
            const r = await stopSynapseBeforeReplace({
                container: str(f, "container"), image: str(f, "image"), command, synapse: parseContainerList(f.synapse as string | undefined),
                data: f.data === undefined ? undefined : parseDataLocation(str(f, "data")), major: f.major === undefined ? undefined : int(f, "major"),
                port: f.port as string | undefined, network: f.network as string | undefined, alias: f.alias as string | undefined,
                user: f.user as string | undefined, database: f.database as string | undefined, password: password(false),
            });
            if (r.startChecked) out(`before-replace: the replacement's server (${str(f, "image")}, the declared settings, this cluster's configuration files) started and stopped cleanly in a throw-away container.`);
            out(r.replacing
                ? `before-replace: "${str(f, "container")}" will be replaced (${r.replacing}); ${r.stopped.length ? `stopped Synapse (${r.stopped.join(", ")}) first, and serve starts it again` : "Synapse was not running here"}.`
                : `before-replace: "${str(f, "container")}" is not being replaced while it serves; nothing to do.`);
        },
    },
    "check-settings": {
        summary: "Check declared settings (postgres:settings) with the cluster's own server binary, changing nothing.",
        flags: {
            container: "the cluster's container (when it is not running yet, there is nothing to check against)",
            settings: "the settings as a JSON object, like {\"work_mem\":\"16MB\"}",
        },
        async run(f, out) {
            const r = await checkSettings(str(f, "container"), settingsFlag(f));
            out(r.checked
                ? `check-settings: "${str(f, "container")}" accepts ${Object.entries(r.settings).map(([k, v]) => `${k}=${v}`).join(", ") || "the removal of every declared setting"}.`
                : `check-settings: "${str(f, "container")}" is not running yet; its first start applies the settings (an upgrade's copy-config step checks them before the switch).`);
        },
    },
    "copy-config": {
        stopsSynapse: "before",
        oldCluster: "from",
        summary: "Copy postgresql.conf, postgresql.auto.conf, pg_hba.conf and pg_ident.conf into the new cluster and restart it.",
        flags: {
            from: "the old cluster's container",
            to: "the new (staging) container",
            "settings?": "postgres:settings as a JSON object: checked here against the copied files, before the switch",
            ...CONFIG_FLAGS,
        },
        async run(f, out) {
            reportConfig("copy-config", await copyConfig({ from: str(f, "from"), to: str(f, "to"), ...configInput(f) }), out);
        },
    },
    verify: {
        stopsSynapse: "before",
        oldCluster: "old",
        summary: "Compare old and new: databases, roles, row counts, sequences, and a password login.",
        flags: {
            old: "the old cluster's container",
            new: "the new (staging) container",
            "login-user?": "the role Synapse logs in as (default synapse)",
            "login-database?": "its database (default synapse)",
            "json!": "print the report as JSON",
        },
        async run(f, out) {
            // The marker is read beside the comparison (Synapse is down); it advances only when verify passed. Both
            // start a staging container a daemon restart stopped (a second docker start of it does nothing).
            const markerRead = requireContainer(str(f, "new"), "new").then(resumeStaging)
                .then(async (info) => ({ user: superuserOf(info), marker: await readMarkerIn(info.name, superuserOf(info)) }))
                .catch((err: Error) => err);
            const report = await verifyClusters({
                old: str(f, "old"),
                new: str(f, "new"),
                loginUser: (f["login-user"] as string) ?? "synapse",
                loginDatabase: (f["login-database"] as string) ?? "synapse",
                password: password(false),
            });
            out(f.json ? JSON.stringify(report, null, 2) : formatReport(report));
            const read = await markerRead;
            if (read instanceof Error) throw read;
            // Before the differences: a copy older than Synapse's last start says why it differs, and what to do.
            await requireCopyAfterSynapse(parseContainerList(f.synapse as string | undefined), read.marker?.copiedAt);
            if (report.differences.length > 0) {
                throw new StepError(`verify found ${report.differences.length} difference(s) between "${report.old}" and "${report.new}", so the switch will not happen: ${report.differences.slice(0, 3).join("; ")}.`);
            }
            if (read.marker?.state === "restored") await writeMarkerIn(str(f, "new"), read.user, advanceMarker(read.marker, "verified"));
        },
    },
    cutover: {
        stopsSynapse: "before",
        oldCluster: "old",
        summary: "Switch: stop and remove the verified staging container, stop the old one (its data stays).",
        flags: {
            old: "the old cluster's container",
            new: "the verified staging container",
            data: "the new cluster's volume name or absolute host folder",
            image: "the new major's image",
            major: "the new major",
            "database?": "Synapse's database (default synapse), whose stream position is recorded for a revert",
        },
        async run(f, out) {
            const r = await cutover({
                database: f.database as string | undefined,
                old: str(f, "old"),
                new: str(f, "new"),
                data: parseDataLocation(str(f, "data")),
                image: str(f, "image"),
                major: int(f, "major"),
                synapse: parseContainerList(f.synapse as string | undefined),
            });
            if (r.fence) out(fenceLine("cutover", str(f, "old"), r.fence));
            if (r.alreadyDone) return out("cutover: already switched; nothing to do.");
            out(`cutover: "${str(f, "old")}" took no writes since the copy was taken; stopped ${r.stopped.map((s) => `"${s}"`).join(" and ") || "nothing more"}.`);
            if (r.reconnected?.length) out(`cutover: the stopped "${str(f, "old")}" is back on ${listed(r.reconnected)}, so a revert starts it as it was.`);
        },
    },
    serve: {
        stopsSynapse: "around",
        summary: "Make this cluster the one Synapse reaches: stop our other holder of the alias, start this one.",
        flags: {
            container: "the cluster's container", network: "the Docker network Synapse uses", alias: "the host name Synapse connects to",
            "database?": "Synapse's database (default synapse), checked for events a revert would lose",
            "accept-loss?": "the number of events written since the switch that a revert may lose (default 0), or any: also when they cannot be counted",
        },
        async run(f, out) {
            const r = await serveCluster({
                container: str(f, "container"), network: str(f, "network"), alias: str(f, "alias"),
                synapse: parseContainerList(f.synapse as string | undefined),
                database: f.database as string | undefined,
                acceptLoss: f["accept-loss"] === "any" ? "any" : f["accept-loss"] === undefined ? 0 : int0(f, "accept-loss"),
            });
            if (r.eventsLost !== undefined) out(`serve: reverted; ${r.eventsLost === "uncounted" ? "an uncounted number of" : r.eventsLost} event(s) written since the switch stay only in the newer cluster; cleared ${r.oneTimeKeysCleared ?? 0} one-time keys so clients upload fresh ones.`);
            const stopped = r.stoppedOthers.length ? ` (stopped ${r.stoppedOthers.join(", ")})` : "";
            out(`serve: "${str(f, "container")}" answers as "${str(f, "alias")}" on "${str(f, "network")}" with PostgreSQL ${r.version}${stopped}${r.started ? "" : "; it was already running"}.`);
            if (r.extensions?.updated.length) out(`serve: updated the extensions pg_upgrade kept at their old versions: ${r.extensions.updated.map((u) => `${u.name} ${u.version} -> ${u.to} in ${u.database}`).join(", ")}.`);
            if (r.extensions?.failed.length) out(`serve: warning: could not update ${r.extensions.failed.join(", ")}; it works at its old version, run ALTER EXTENSION ... UPDATE by hand.`);
            if (r.passwordSet) out(`serve: the role ${r.passwordSet} did not log in with postgres:password; its password was set to it (as a scram-sha-256 verifier), and it logs in over TCP now.`);
            if (r.fenceLifted) out(`serve: "${str(f, "container")}" is back on ${listed(r.fenceLifted) || "its networks"}, which an upgrade that never switched had taken it off.`);
            if (r.standbysRemoved.length) out(`serve: removed the standby ${r.standbysRemoved.join(", ")} that an upgrade which never switched left following "${str(f, "container")}".`);
            if (r.synapseStarted.length) out(`serve: started Synapse (${r.synapseStarted.join(", ")}).`);
        },
    },
};

const SYNAPSE_FLAG = "synapse?";
const SYNAPSE_FLAG_HELP = "Synapse's containers, comma-separated: stopped first; started again on the old cluster if this step fails (serve: after the switch)";

export function parseFlags(spec: Subcommand["flags"], argv: string[]): Flags {
    const flags: Flags = {};
    const known = new Map(Object.keys(spec).map((k) => [k.replace(/[?!]$/, ""), k]));
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i];
        const name = arg.replace(/^--/, "");
        const key = known.get(name);
        if (!arg.startsWith("--") || !key) throw new StepError(`Unknown argument "${arg}"; see --help.`);
        if (key.endsWith("!")) {
            flags[name] = true;
            continue;
        }
        const value = argv[++i];
        if (value === undefined || value.startsWith("--")) throw new StepError(`--${name} needs a value.`);
        flags[name] = value;
    }
    for (const key of Object.keys(spec)) {
        if (!/[?!]$/.test(key) && flags[key] === undefined) throw new StepError(`--${key} is required (${spec[key]}); see --help.`);
    }
    return flags;
}

function help(name?: string): string {
    if (name && SUBCOMMANDS[name]) {
        const s = SUBCOMMANDS[name];
        const lines = [`synapse-pg ${name}: ${s.summary}`, ""];
        const flags = s.stopsSynapse ? { ...s.flags, [SYNAPSE_FLAG]: SYNAPSE_FLAG_HELP } : s.flags;
        for (const [k, d] of Object.entries(flags)) {
            const flag = k.replace(/[?!]$/, "");
            lines.push(`  --${flag}${k.endsWith("!") ? "" : " <value>"}`.padEnd(30) + `${d}${k.endsWith("?") || k.endsWith("!") ? " (optional)" : ""}`);
        }
        lines.push("", `The database password is read from ${PASSWORD_ENV}, never from the command line.`);
        return lines.join("\n");
    }
    return ["synapse-pg <step> [flags]   (synapse-pg <step> --help for its flags)", "",
        ...Object.entries(SUBCOMMANDS).map(([n, s]) => `  ${n.padEnd(12)} ${s.summary}`)].join("\n");
}

/** "<step>: fenced "old": took it off the network net, ended 1 client session(s); ..." */
function fenceLine(step: string, old: string, fence: Fence): string {
    const done = describeFence(fence);
    return done
        ? `${step}: fenced "${old}" until the switch: ${done}; nothing can write to it now (our steps reach it with docker exec).`
        : `${step}: "${old}" was already fenced; no client session was left to end.`;
}

/** After a failure before the switch: the old cluster's fence lifted, Synapse started; what happened, as a sentence. */
async function backToOldCluster(old: string | undefined, synapse: string[]): Promise<string> {
    let lifted: string[] | undefined;
    try {
        lifted = old ? await liftFence(old) : undefined;
    } catch (err) {
        return ` ${(err as Error).message} Synapse was left stopped.`;
    }
    const started = synapse.length ? await startSynapse(synapse).catch(() => [] as string[]) : [];
    const back = lifted ? `"${old}" takes connections again (back on ${listed(lifted) || "its networks"})` : "";
    const synapseBack = started.length ? `Synapse (${started.join(", ")}) was started again on the old cluster` : "";
    return back || synapseBack ? ` ${[back, synapseBack].filter(Boolean).join(" and ")}.` : "";
}

export async function main(argv: string[]): Promise<void> {
    // For the benchmark: the step runner's own peak memory (children such as docker are not counted).
    if (process.env.SYNAPSE_PG_REPORT_RSS) {
        process.on("exit", () => process.stderr.write(`synapse-pg peak-rss-kb ${process.resourceUsage().maxRSS}\n`));
    }
    const [name, ...rest] = argv;
    if (!name || name === "--help" || name === "-h") {
        console.log(help());
        return;
    }
    const sub = SUBCOMMANDS[name];
    if (!sub) {
        console.error(`synapse-pg: unknown step "${name}".\n${help()}`);
        process.exitCode = 2;
        return;
    }
    if (rest.includes("--help") || rest.includes("-h")) {
        console.log(help(name));
        return;
    }
    const out = (line: string) => console.log(line);
    let synapse: string[] = [];
    let flags: Flags = {};
    try {
        const spec = sub.stopsSynapse ? { ...sub.flags, [SYNAPSE_FLAG]: SYNAPSE_FLAG_HELP } : sub.flags;
        flags = parseFlags(spec, rest);
        synapse = parseContainerList(flags.synapse as string | undefined);
        if (sub.stopsSynapse === "before" && synapse.length) {
            const stopped = await stopSynapse(synapse);
            if (stopped.length) out(`${name}: stopped Synapse (${stopped.join(", ")})`);
        }
        await sub.run(flags, out);
    } catch (err) {
        let message = err instanceof StepError || err instanceof ProcessError ? err.message : `unexpected failure: ${(err as Error).stack}`;
        // Before the switch the old cluster is untouched and still the one Synapse is configured for: its fence
        // comes down first, so Synapse finds it.
        if (sub.stopsSynapse === "before") message += await backToOldCluster(flags[sub.oldCluster ?? ""] as string | undefined, synapse);
        console.error(`synapse-pg ${name}: ${message}`);
        process.exitCode = 1;
    }
}
