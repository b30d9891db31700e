// Which method an upgrade already under way uses, so that the default method (pg_upgrade, the fast one) applies
// to new upgrades only. Stacks that started an upgrade when the default was directory keep it: changing method in
// the middle would have Pulumi delete the dump steps and run prepare against an old cluster that may already be
// stopped (after cutover), or make a second copy of a cluster that is half-way through the first.
//
// What an upgrade leaves before it can be switched back and forth: a dump in the backup folder (dump methods, from
// their second step), and in the new data location a marker saying how it was made (restore, or prepare).
import { hostFolders } from "../host/folders";
import { DumpMethod } from "../dump/dump";
import { DataLocation } from "../target/layout";
import { locationExists, readTargetState } from "../target/markers";
import * as path from "node:path";

export type UpgradeMethod = DumpMethod | "pg_upgrade";

export interface MethodUnderwayInput {
    /** The new cluster's data location, major and image (to read its marker). */
    data: DataLocation;
    major: number;
    image: string;
    /** The backup folder and the dump's name, where a dump method writes (optional: pg_upgrade writes none). */
    backupDir?: string;
    dumpName?: string;
}

export interface MethodUnderway {
    method: UpgradeMethod | null;
    /** What told it, in words. */
    why: string;
}

export async function methodUnderway(input: MethodUnderwayInput): Promise<MethodUnderway> {
    // Read only where the location exists: a helper container's mount would create the volume (unlabelled, before
    // Pulumi declares it) or the host folder.
    const m = (await locationExists(input.data))
        ? (await readTargetState(input.data, input.major, input.image)).marker
        : undefined;
    if (m?.method) return { method: m.method, why: `the new data's marker says ${m.method} (state ${m.state})` };
    // Markers written by restore before they named their method: the dump they loaded says which.
    if (m?.dump)
        return {
            method: m.dump.path.endsWith(".sql") ? "dumpall" : "directory",
            why: `the new data holds the dump ${m.dump.path} (state ${m.state})`,
        };
    if (input.backupDir && input.dumpName) {
        for (const [file, method] of [
            [input.dumpName, "directory"],
            [`${input.dumpName}.partial`, "directory"],
            [`${input.dumpName}.sql`, "dumpall"],
            [`${input.dumpName}.sql.partial`, "dumpall"],
        ] as const) {
            if (await (await hostFolders()).stat(path.join(input.backupDir, file))) {
                return { method, why: `the backup folder holds the dump ${file}` };
            }
        }
    }
    return { method: null, why: "no upgrade under way: no marker in the new data location and no dump" };
}
