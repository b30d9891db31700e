// Reading, while the program is evaluated, which method an upgrade already under way uses (postgres:method
// unset), so `pulumi preview` shows the steps that will really run. A command invoke runs `synapse-pg
// method-underway`, which only reads (runner/checks/method-underway.ts).
import * as command from "@pulumi/command";
import { DataLocation, formatDataLocation } from "../runner/target/layout";
import { MethodUnderway } from "../runner/checks/method-underway";
import { stepEnvironment, stepLine } from "./command-line";

export async function readMethodUnderway(args: {
    data: DataLocation;
    major: number;
    image: string;
    backupDir?: string;
    dumpName: string;
    dockerHost?: string;
}): Promise<MethodUnderway> {
    const result = await command.local.run({
        command: stepLine("method-underway", {
            data: formatDataLocation(args.data),
            major: args.major,
            image: args.image,
            ...(args.backupDir ? { "backup-dir": args.backupDir, name: args.dumpName } : {}),
        }),
        environment: stepEnvironment(args.dockerHost),
    });
    return JSON.parse(result.stdout.trim().split("\n").pop()!);
}
