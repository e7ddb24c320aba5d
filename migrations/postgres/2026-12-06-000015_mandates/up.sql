-- Mandates: spend an agent asks people for in advance, decided through the same approvals.
-- A mandate is an approval whose rule is 'mandate': it carries why the agent asks, and the
-- hosts and merchants it may pay (JSON arrays; none: any the policy allows).
ALTER TABLE approvals ADD COLUMN purpose TEXT;
ALTER TABLE approvals ADD COLUMN hosts TEXT;
ALTER TABLE approvals ADD COLUMN merchants TEXT;

-- MPP: the USDC rail answers HTTP `Payment` challenges too; each payment says which protocol it paid.
ALTER TABLE x402_payments ADD COLUMN protocol TEXT NOT NULL DEFAULT 'x402' CHECK (protocol IN ('x402', 'mpp'));
