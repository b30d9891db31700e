// The steps of an upgrade's downtime, in the order they run: Synapse is stopped before each (--synapse) and, when
// one fails, started again on the old cluster, whose fence comes down first.
import { copyConfig } from "../config/copy-config";
import { cutover } from "../switch/cutover";
import { DUMP_METHODS, DumpMethod, dumpCluster } from "../dump/dump";
import { formatBytes } from "../host";
import { requireContainer, resumeStaging, superuserOf } from "../docker/containers";
import { runPgUpgrade } from "../pg-upgrade/upgrade";
import { preflight } from "../checks/preflight";
import { copyDump } from "../dump/copy";
import { restoreCluster } from "../dump/restore";
import { StepError } from "../step-error";
import { parseContainerList, requireCopyAfterSynapse } from "../switch/synapse";
import { advanceMarker, readMarkerIn, writeMarkerIn } from "../target/markers";
import { formatReport, verifyClusters } from "../checks/verify";
import { Flags } from "./flags";
import { CONFIG, configInput, LOGIN, loginInput, NEW, NEW_CLUSTER, newClusterInput, OLD, password } from "./inputs";
import { fenceLine, listed, Out, reportConfig, reportPreflight, reportUpgrade } from "./reports";
import { Step } from "./step";
import { PASSWORD_ENV } from "../names";
import { parseDataLocation } from "../target/layout";

const REHASH = "re-set as scram-sha-256 if its hash is md5";

export const DOWNTIME: Record<string, Step> = {
    preflight: {
        stopsSynapse: "before",
        fencesOld: true,
        summary: "Check, changing nothing, that the old cluster can be upgraded now.",
        flags: {
            old: { ...OLD, was: ["container"] },
            major: { help: "the major to upgrade to", was: ["target-major"] },
            image: { help: "the image of the new major", was: ["target-image"] },
            data: { ...NEW_CLUSTER.data, was: ["target-data"] },
            "backup-dir": { help: "where the dump will go, to check its free space", optional: true },
            "backup-copy-dir": {
                help: "where the dump's copy will go on this machine, to check its free space",
                optional: true,
            },
            new: {
                help: "the staging container prepare made (method pg_upgrade), read instead of the data location",
                optional: true,
                was: ["staging"],
            },
            "login-user": {
                help: `the role Synapse logs in as: with ${PASSWORD_ENV} set, its login to the old cluster is checked`,
                optional: true,
            },
            "login-database": LOGIN["login-database"],
            json: { help: "print the result as JSON", boolean: true },
        },
        async run(f, out) {
            const pw = password(false);
            const user = f.opt("login-user");
            const r = await preflight({
                login:
                    pw && user !== undefined
                        ? { user, database: loginInput(f).loginDatabase, password: pw }
                        : undefined,
                container: f.str("old"),
                targetMajor: f.int("major"),
                targetImage: f.str("image"),
                targetData: parseDataLocation(f.str("data")),
                backupDir: f.opt("backup-dir"),
                backupCopyDir: f.opt("backup-copy-dir"),
                staging: f.opt("new"),
            });
            if (f.on("json")) return out(JSON.stringify(r, null, 2));
            if (r.alreadyUpgraded)
                return out(`preflight: "${f.str("old")}" was already switched to ${f.str("major")}; nothing to check.`);
            reportPreflight(r, f.str("old"), f.opt("backup-dir"), out);
        },
    },
    dump: {
        stopsSynapse: "before",
        fencesOld: true,
        summary: "Dump every database, roles and password hashes included, into a 0600 file with a manifest.",
        flags: {
            old: { ...OLD, was: ["container"] },
            "backup-dir": { help: "the backup folder", was: ["out"] },
            name: { help: "the dump's name, without extension (default: the old container's name)", optional: true },
            method: {
                help: "directory (default: pg_dump -Fd per database, restored in parallel) or dumpall (one pg_dumpall script, the guide's)",
                choices: DUMP_METHODS,
                optional: true,
            },
            "tool-image": { help: "image whose pg_dump to use (default: the old container's)", optional: true },
            "backup-copy-dir": {
                help: "a folder on this machine for a second copy of the dump, checked against the manifest's sha256",
                optional: true,
            },
        },
        async run(f, out) {
            const r = await dumpCluster({
                container: f.str("old"),
                outDir: f.str("backup-dir"),
                name: f.opt("name"),
                method: (f.opt("method") ?? "directory") as DumpMethod,
                toolImage: f.opt("tool-image"),
                password: password(false),
                fence: true,
            });
            if (r.fence) out(fenceLine("dump", f.str("old"), r.fence));
            out(
                `dump: ${formatBytes(r.manifest.bytes)} from PostgreSQL ${r.manifest.source.version}, sha256 ${r.manifest.sha256}`,
            );
            if (r.manifest.source.pinned)
                out(
                    `dump: the old cluster runs image ${r.manifest.source.pinned}; a revert is checked to run exactly this one.`,
                );
            const copyDir = f.opt("backup-copy-dir");
            if (copyDir !== undefined)
                out(`dump: copied to ${await copyDump(r.path, r.manifest, copyDir)} on this machine, sha256 matched`);
            out(r.path);
        },
    },
    restore: {
        stopsSynapse: "before",
        fencesOld: true,
        summary: "Load a dump into a staging container of the new major on the new data location.",
        flags: {
            new: { help: "the new cluster's (staging) container to create", was: ["container"] },
            ...NEW_CLUSTER,
            dump: { help: "the dump written by the dump step (<name>.sql or the <name> folder)", was: ["in"] },
            old: {
                help: "the old cluster's container, fenced since the dump: if the restore fails it takes connections again",
                optional: true,
            },
            "login-user": { help: `the role Synapse logs in as (default synapse): ${REHASH}`, optional: true },
        },
        async run(f, out) {
            const r = await restoreCluster({
                container: f.str("new"),
                ...newClusterInput(f),
                dumpPath: f.str("dump"),
                password: password(true),
                loginUser: loginInput(f).loginUser,
                old: f.opt("old"),
            });
            if (r.rehashed)
                out(
                    `restore: the role ${r.rehashed} had an md5 password hash; it was re-set as scram-sha-256 from the configured password.`,
                );
            if (r.filtered?.attverOptionsDropped) {
                out(
                    `restore: dropped ${r.filtered.attverOptionsDropped} internal pg_attver column markers of the old server, which PostgreSQL ${f.str("major")} does not accept.`,
                );
            }
            if (r.setAsideTo)
                out(
                    `restore: the earlier ${f.str("major")} cluster, which served Synapse before a revert, was kept at ${r.setAsideTo}`,
                );
            out(
                r.alreadyRestored
                    ? `restore: "${f.str("new")}" already holds this dump (sha256 ${r.manifest.sha256}); nothing to do.`
                    : `restore: loaded ${formatBytes(r.manifest.bytes)} into "${f.str("new")}".`,
            );
        },
    },
    upgrade: {
        stopsSynapse: "before",
        fencesOld: true,
        summary:
            "pg_upgrade method: pg_upgrade --link on the prepared standby (or, without one, --copy of the stopped old cluster) into the new cluster.",
        flags: {
            old: { ...OLD, was: ["container"] },
            new: { help: "the prepared staging container", was: ["staging"] },
            ...NEW_CLUSTER,
            "login-user": { help: `the role Synapse logs in as (default synapse): ${REHASH}`, optional: true },
        },
        async run(f, out) {
            const r = await runPgUpgrade({
                container: f.str("old"),
                staging: f.str("new"),
                ...newClusterInput(f),
                password: password(true),
                loginUser: loginInput(f).loginUser,
                ...configInput(f),
            });
            reportUpgrade(r, { old: f.str("old"), new: f.str("new") }, out);
        },
    },
    "copy-config": {
        stopsSynapse: "before",
        fencesOld: true,
        summary:
            "Copy postgresql.conf, postgresql.auto.conf, pg_hba.conf and pg_ident.conf into the new cluster and restart it.",
        flags: { old: { ...OLD, was: ["from"] }, new: { ...NEW, was: ["to"] }, ...CONFIG },
        async run(f, out) {
            reportConfig(
                "copy-config",
                await copyConfig({ from: f.str("old"), to: f.str("new"), ...configInput(f) }),
                out,
            );
        },
    },
    verify: {
        stopsSynapse: "before",
        fencesOld: true,
        summary: "Compare old and new: databases, roles, row counts, sequences, and a password login.",
        flags: { old: OLD, new: NEW, ...LOGIN, json: { help: "print the report as JSON", boolean: true } },
        run: verify,
    },
    cutover: {
        stopsSynapse: "before",
        fencesOld: true,
        summary: "Switch: stop and remove the verified staging container, stop the old one (its data stays).",
        flags: {
            old: OLD,
            new: { help: "the verified staging container" },
            ...NEW_CLUSTER,
            database: {
                help: "Synapse's database (default synapse), whose stream position is recorded for a revert",
                optional: true,
            },
        },
        async run(f, out) {
            const r = await cutover({
                database: f.opt("database"),
                old: f.str("old"),
                new: f.str("new"),
                ...newClusterInput(f),
                synapse: parseContainerList(f.opt("synapse")),
            });
            if (r.fence) out(fenceLine("cutover", f.str("old"), r.fence));
            if (r.alreadyDone) return out("cutover: already switched; nothing to do.");
            out(
                `cutover: "${f.str("old")}" took no writes since the copy was taken; stopped ${r.stopped.map((s) => `"${s}"`).join(" and ") || "nothing more"}.`,
            );
            if (r.reconnected?.length)
                out(
                    `cutover: the stopped "${f.str("old")}" is back on ${listed(r.reconnected)}, so a revert starts it as it was.`,
                );
        },
    },
};

async function verify(f: Flags, out: Out): Promise<void> {
    // The marker is read beside the comparison (Synapse is down); it advances only when verify passed. Both start a
    // staging container a daemon restart stopped (a second docker start of it does nothing).
    const markerRead = requireContainer(f.str("new"), "new")
        .then(resumeStaging)
        .then(async (info) => ({ user: superuserOf(info), marker: await readMarkerIn(info.name, superuserOf(info)) }))
        .catch((err: Error) => err);
    const report = await verifyClusters({
        old: f.str("old"),
        new: f.str("new"),
        ...loginInput(f),
        password: password(false),
    });
    out(f.on("json") ? JSON.stringify(report, null, 2) : formatReport(report));
    const read = await markerRead;
    if (read instanceof Error) throw read;
    // Before the differences: a copy older than Synapse's last start says why it differs, and what to do.
    await requireCopyAfterSynapse(parseContainerList(f.opt("synapse")), read.marker?.copiedAt);
    if (report.differences.length > 0) {
        throw new StepError(
            `verify found ${report.differences.length} difference(s) between "${report.old}" and "${report.new}", so the switch will not happen: ${report.differences.slice(0, 3).join("; ")}.`,
        );
    }
    if (read.marker?.state === "restored")
        await writeMarkerIn(f.str("new"), read.user, advanceMarker(read.marker, "verified"));
}
