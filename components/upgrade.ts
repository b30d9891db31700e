// A major upgrade: preflight, dump, restore, copy-config, verify and cutover, each a command resource running one
// step of the step runner, chained so that nothing after a failed step runs. The new cluster's serving container
// depends on the cutover (see stack.ts), so it never takes the alias before verify has passed.
import * as command from "@pulumi/command";
import * as pulumi from "@pulumi/pulumi";
import { dumpPathOf, DumpMethod } from "../runner/dump/dump";
import { DataLocation, formatDataLocation } from "../runner/target/layout";
import { shellQuote, stepEnvironment, stepCommand } from "./command-line";
import { PASSWORD_ENV } from "../runner/names";

/** directory and dumpall dump and restore; pg_upgrade keeps the data files (see runner/pg-upgrade/upgrade.ts, runner/pg-upgrade/standby.ts). */
export type UpgradeMethod = DumpMethod | "pg_upgrade";

export interface MajorUpgradeArgs {
    /** The old cluster's container. */
    fromContainer: pulumi.Input<string>;
    /** The new major, its image and data location. */
    toMajor: number;
    toImage: pulumi.Input<string>;
    toData: DataLocation;
    /** The staging container the restore (or prepare) creates and cutover removes. */
    stagingContainer: string;
    /** Host folder for the dump (dump methods only). */
    backupDir?: string;
    /** A folder where pulumi up runs for a checked copy of the dump (dump methods only). */
    backupCopyDir?: string;
    method: UpgradeMethod;
    /** The role and database Synapse logs in with, checked by verify with the password. */
    loginUser: pulumi.Input<string>;
    loginDatabase: pulumi.Input<string>;
    /** docker:host: where every step reaches Docker. */
    dockerHost?: string;
    /** Secret; reaches the steps only through their environment. */
    password: pulumi.Input<string>;
    /** postgres:settings for the new cluster: checked by copy-config against the copied files. */
    settings?: Record<string, string>;
    /** postgres:dropSettings: rejected parameters copy-config may leave out of the new cluster. */
    dropSettings?: string[];
    /** postgres:dropAccessRules: rejected access rules copy-config may leave out of the new cluster. */
    dropAccessRules?: string[];
    /** Synapse's containers: every step but prepare stops them first and starts them again if it fails before the switch. */
    synapseContainers: string[];
    /** Every step's trigger: a new attempt runs the whole upgrade again from a fresh dump. */
    attempt: number;
    /** Resources the first step waits for (the old container, the new data volume). */
    after: pulumi.Input<pulumi.Resource>[];
}

/** The steps of each method, in order. */
export const STEPS = {
    dump: ["preflight", "dump", "restore", "copy-config", "verify", "cutover"],
    pg_upgrade: ["prepare", "preflight", "upgrade", "copy-config", "verify", "cutover"],
} as const;
type Step = (typeof STEPS)["dump"][number] | (typeof STEPS)["pg_upgrade"][number];

/** Steps that run while Synapse still serves (prepare makes pg_upgrade's standby): they get no --synapse, so they never stop it. */
const BEFORE_DOWNTIME: Step[] = ["prepare"];

export class MajorUpgrade extends pulumi.ComponentResource {
    readonly backupFile?: string;
    readonly steps: Partial<Record<Step, command.local.Command>>;
    readonly cutover: command.local.Command;
    readonly verified: pulumi.Output<string>;

    constructor(name: string, args: MajorUpgradeArgs, opts?: pulumi.ComponentResourceOptions) {
        super("synapse-postgres:index:MajorUpgrade", name, {}, opts);
        const physical = args.method === "pg_upgrade";
        if (!physical && args.backupDir === undefined) throw new Error(`${name}: a dump method needs backupDir`);
        this.backupFile = physical ? undefined : dumpPathOf(args.backupDir!, name, args.method as DumpMethod);
        const lines = physical ? pgUpgradeLines(args) : dumpLines(args, name, this.backupFile!);
        const steps: Partial<Record<Step, command.local.Command>> = {};
        let previous: pulumi.Input<pulumi.Resource>[] = args.after;
        for (const step of physical ? STEPS.pg_upgrade : STEPS.dump) {
            steps[step] = this.declareStep(name, step, lines[step]!, args, previous);
            previous = [steps[step]!];
        }
        this.steps = steps;
        this.cutover = steps.cutover!;
        this.verified = steps.verify!.stdout;
        this.registerOutputs({ backupFile: this.backupFile, verified: this.verified });
    }

    private declareStep(
        name: string,
        step: Step,
        line: StepLine,
        args: MajorUpgradeArgs,
        previous: pulumi.Input<pulumi.Resource>[],
    ): command.local.Command {
        const synapse = args.synapseContainers.join(",");
        const stopsSynapse = synapse !== "" && !BEFORE_DOWNTIME.includes(step);
        return new command.local.Command(
            `${name}-${step}`,
            {
                ...line,
                environment: stepEnvironment(args.dockerHost, line.environment),
                create: stopsSynapse
                    ? pulumi.interpolate`${line.create} --synapse ${shellQuote(synapse)}`
                    : line.create,
                // A step that succeeded is history: a later change of its inputs (a new minor version, a password)
                // is recorded and runs nothing, and its output stays what the step said. Not ignoreChanges: the
                // engine keeps an ignored input's old value through a replacement too, so a new attempt would run
                // the command lines of the first one, without the config changed since.
                update: finishedStep(step),
                triggers: [args.attempt],
            },
            {
                parent: this,
                // Each step starts only after the one before it succeeded: a failure stops the chain there.
                dependsOn: previous,
                // A new attempt (triggers) replaces prepare: the old one's delete, which removes the standby, runs
                // first, so it never removes the standby the new one made.
                deleteBeforeReplace: step === "prepare",
            },
        );
    }
}

interface StepLine {
    create: pulumi.Output<string>;
    delete?: pulumi.Output<string>;
    environment?: Record<string, pulumi.Input<string>>;
}

function secretEnv(args: MajorUpgradeArgs): Record<string, pulumi.Input<string>> {
    return { [PASSWORD_ENV]: pulumi.secret(args.password) };
}

/** The configuration's flags: copy-config's, and prepare's, which carries the configuration before the downtime. */
function configFlags(args: MajorUpgradeArgs): Record<string, string> {
    return {
        ...(args.settings && Object.keys(args.settings).length ? { settings: JSON.stringify(args.settings) } : {}),
        ...(args.dropSettings?.length ? { drop: args.dropSettings.join(",") } : {}),
        ...(args.dropAccessRules?.length ? { "drop-access-rules": args.dropAccessRules.join(",") } : {}),
    };
}

/** The steps both methods share: preflight (with what each method reads), copy-config, verify and cutover. */
function sharedLines(args: MajorUpgradeArgs, readsInPreflight: Record<string, pulumi.Input<string>>) {
    const [old, data] = [args.fromContainer, formatDataLocation(args.toData)];
    const login = { "login-user": args.loginUser, "login-database": args.loginDatabase };
    return {
        preflight: {
            create: stepCommand("preflight", {
                old,
                major: args.toMajor,
                image: args.toImage,
                data,
                ...readsInPreflight,
                ...login,
            }),
            environment: secretEnv(args),
        },
        "copy-config": {
            create: stepCommand("copy-config", { old, new: args.stagingContainer, ...configFlags(args) }),
        },
        verify: {
            create: stepCommand("verify", { old, new: args.stagingContainer, ...login }),
            environment: secretEnv(args),
        },
        cutover: {
            create: stepCommand("cutover", {
                old,
                new: args.stagingContainer,
                data,
                image: args.toImage,
                major: args.toMajor,
                database: args.loginDatabase,
            }),
        },
    };
}

function dumpLines(args: MajorUpgradeArgs, dumpName: string, backupFile: string): Partial<Record<Step, StepLine>> {
    const old = args.fromContainer;
    const newCluster = { image: args.toImage, data: formatDataLocation(args.toData), major: args.toMajor };
    const copy: Record<string, string> = args.backupCopyDir ? { "backup-copy-dir": args.backupCopyDir } : {};
    return {
        ...sharedLines(args, { ...(args.backupDir ? { "backup-dir": args.backupDir } : {}), ...copy }),
        dump: {
            // The new major's pg_dump, as PostgreSQL recommends for upgrades.
            create: stepCommand("dump", {
                old,
                "backup-dir": args.backupDir!,
                name: dumpName,
                method: args.method,
                "tool-image": args.toImage,
                ...copy,
            }),
            environment: secretEnv(args),
        },
        restore: {
            create: stepCommand("restore", {
                new: args.stagingContainer,
                ...newCluster,
                dump: backupFile,
                "login-user": args.loginUser,
                old,
            }),
            environment: secretEnv(args),
        },
    };
}

function pgUpgradeLines(args: MajorUpgradeArgs): Partial<Record<Step, StepLine>> {
    const old = args.fromContainer;
    const newCluster = {
        new: args.stagingContainer,
        image: args.toImage,
        data: formatDataLocation(args.toData),
        major: args.toMajor,
    };
    return {
        ...sharedLines(args, { new: args.stagingContainer }),
        prepare: {
            create: stepCommand("prepare", { old, ...newCluster, ...configFlags(args) }),
            // An upgrade taken out of the stack before its switch (or pulumi destroy): the standby prepare made
            // stops following the old server. After a switch there is none, and this does nothing.
            delete: stepCommand("remove-standby", { new: args.stagingContainer }),
            environment: secretEnv(args),
        },
        upgrade: {
            create: stepCommand("upgrade", { old, ...newCluster, "login-user": args.loginUser }),
            environment: secretEnv(args),
        },
    };
}

/**
 * What a finished step runs when its inputs change: nothing but its stored output again (the provider passes it
 * in PULUMI_COMMAND_STDOUT), and a line that says so.
 */
export function finishedStep(step: Step): string {
    return `printf '%s\\n' "$PULUMI_COMMAND_STDOUT"; echo '${step}: done in an earlier pulumi up; its new inputs are recorded and nothing runs (bump postgres:attempt to run the upgrade again with them)' >&2`;
}
