"""The export: the stage (`stage`), PITR and incremental exports (`pitr`), the scan export (`scan`) and
reading an export folder (`inspect`). Nothing is imported here, so catch-up can use `pitr` and `inspect`
without loading the stage."""
