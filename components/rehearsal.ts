// A rehearsal as a stack (postgres:rehearse: true, on a stack of its own): one command that runs
// `synapse-pg rehearse` against the live old cluster and keeps its JSON report as the stack output.
import * as command from "@pulumi/command";
import * as pulumi from "@pulumi/pulumi";
import { stepCommand, stepEnvironment } from "./command-line";
import { PASSWORD_ENV } from "../runner/names";

export interface RehearsalArgs {
    /** The live old cluster's container (only read). */
    fromContainer: pulumi.Input<string>;
    /** The major and image to rehearse the upgrade to. */
    toMajor: number;
    toImage: pulumi.Input<string>;
    /** docker:host: where the rehearsal reaches Docker. */
    dockerHost?: string;
    /** The role and database Synapse uses, and their password (secret, environment only). */
    loginUser: pulumi.Input<string>;
    loginDatabase: pulumi.Input<string>;
    password: pulumi.Input<string>;
    /** The real run's backup folder, to check its space. */
    backupDir?: string;
    /** The method the real upgrade will use (pg_upgrade is rehearsed on a physical copy). */
    method?: string;
    /** Bump to rehearse again (the command's trigger). */
    attempt: number;
}

export class Rehearsal extends pulumi.ComponentResource {
    readonly report: pulumi.Output<string>;

    constructor(name: string, args: RehearsalArgs, opts?: pulumi.ComponentResourceOptions) {
        super("synapse-postgres:index:Rehearsal", name, {}, opts);
        const run = new command.local.Command(
            `${name}-run`,
            {
                create: stepCommand("rehearse", {
                    old: args.fromContainer,
                    major: args.toMajor,
                    image: args.toImage,
                    "login-user": args.loginUser,
                    "login-database": args.loginDatabase,
                    ...(args.backupDir ? { "backup-dir": args.backupDir } : {}),
                    ...(args.method === "pg_upgrade" ? { method: "pg_upgrade" } : {}),
                }).apply((line) => `${line} --json`),
                environment: stepEnvironment(args.dockerHost, { [PASSWORD_ENV]: pulumi.secret(args.password) }),
                triggers: [args.attempt],
            },
            { parent: this },
        );
        this.report = run.stdout;
        this.registerOutputs({ report: this.report });
    }
}
