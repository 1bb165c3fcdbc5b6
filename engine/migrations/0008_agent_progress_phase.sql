-- The phase of an agent boot's latest progress report (`progress`'s "phase"), kept apart so that a report of the
-- same phase is one UPDATE and a change of phase (which the host's events record) is told by that UPDATE matching
-- no row. NULL for boots reported before it existed: their next report counts as a change.
ALTER TABLE agent_boots ADD COLUMN progress_phase TEXT;
