// synapse-postgres: the PostgreSQL behind a Synapse homeserver, one cluster per major, upgraded by stack config.
// See README.md for the upgrade, revert and retire commands.
import { declareProgram } from "./components/stack";

// Outputs: activeVersion, hostAlias, containers, and during an upgrade backupFile and verified (verify's report).
export = declareProgram();
