// The steps that run while Synapse still serves: they read the old cluster and never stop it.
import { DUMP_METHODS } from "../dump/dump";
import { inspectAdopted } from "../checks/inspect";
import { parseDataLocation } from "../target/layout";
import { methodUnderway } from "../checks/method-underway";
import { preparePgUpgrade } from "../pg-upgrade/prepare";
import { rehearse } from "../checks/rehearse";
import { removeStandby, standbyContainerName } from "../pg-upgrade/standby";
import { CONFIG, configInput, LOGIN, loginInput, NEW_CLUSTER, newClusterInput, password } from "./inputs";
import { reportPrepare, reportRehearsal } from "./reports";
import { Step } from "./step";

export const BEFORE_DOWNTIME: Record<string, Step> = {
    rehearse: {
        summary: "Run the whole upgrade on a throw-away copy while Synapse keeps serving; report time and problems.",
        flags: {
            old: { help: "the old cluster's container (live; only read)", was: ["container"] },
            major: { help: "the major to rehearse the upgrade to", was: ["to"] },
            image: { help: "the target image (default: the old image's tag with the major replaced)", optional: true },
            "backup-dir": { help: "the real run's backup folder, to check its free space", optional: true },
            ...LOGIN,
            method: {
                help: "the real upgrade's postgres:method: pg_upgrade is rehearsed on a copy made with pg_basebackup, a dump method with a dump (default)",
                choices: [...DUMP_METHODS, "pg_upgrade"],
                optional: true,
            },
            keep: { help: "leave the rehearsal's container running and print its name", boolean: true },
            json: { help: "print the report as JSON", boolean: true },
        },
        async run(f, out) {
            const r = await rehearse({
                container: f.str("old"),
                to: f.int("major"),
                image: f.opt("image"),
                keep: f.on("keep"),
                password: password(true),
                ...loginInput(f),
                backupDir: f.opt("backup-dir"),
                physical: f.opt("method") === "pg_upgrade",
            });
            if (f.on("json")) return out(JSON.stringify(r, null, 2));
            reportRehearsal(r, out);
        },
    },
    "method-underway": {
        summary:
            "Say, changing nothing, which method an upgrade already under way uses (JSON; method null when none is).",
        flags: {
            data: NEW_CLUSTER.data,
            major: NEW_CLUSTER.major,
            image: { help: "the new major's image (reads the data location)" },
            "backup-dir": { help: "the backup folder a dump method writes to", optional: true },
            name: { help: "the dump's name in it", optional: true },
        },
        async run(f, out) {
            out(
                JSON.stringify(
                    await methodUnderway({
                        data: parseDataLocation(f.str("data")),
                        major: f.int("major"),
                        image: f.str("image"),
                        backupDir: f.opt("backup-dir"),
                        dumpName: f.opt("name"),
                    }),
                ),
            );
        },
    },
    inspect: {
        summary:
            "Read, changing nothing, what an existing PostgreSQL container (postgres:adopt) is: major, data, network, alias.",
        flags: { container: { help: "the container to adopt" } },
        async run(f, out) {
            out(JSON.stringify(await inspectAdopted(f.str("container"))));
        },
    },
    prepare: {
        summary:
            "pg_upgrade method, while Synapse still runs: unpack the old image's binaries, prove they run, initialise the new cluster.",
        flags: {
            old: { help: "the old cluster's container (live; only read)", was: ["container"] },
            new: { help: "the new cluster's (staging) container to create (stopped when done)", was: ["staging"] },
            ...NEW_CLUSTER,
            ...CONFIG,
        },
        async run(f, out) {
            const r = await preparePgUpgrade({
                container: f.str("old"),
                staging: f.str("new"),
                ...newClusterInput(f),
                password: password(true),
                loginUser: "synapse",
                ...configInput(f),
            });
            reportPrepare(
                r,
                { old: f.str("old"), new: f.str("new"), major: f.str("major"), image: f.str("image") },
                out,
            );
        },
    },
    "remove-standby": {
        summary:
            "pg_upgrade method: remove the standby prepare made (the prepare resource's delete: an upgrade given up, or pulumi destroy).",
        flags: {
            new: {
                help: "the new cluster's (staging) container prepare made; its standby is <new>-standby",
                was: ["staging"],
            },
        },
        async run(f, out) {
            const name = standbyContainerName(f.str("new"));
            out(
                (await removeStandby(name))
                    ? `remove-standby: the standby "${name}" was removed; the old cluster was only read by it and is unchanged.`
                    : `remove-standby: there is no standby "${name}"; nothing to do.`,
            );
        },
    },
};
