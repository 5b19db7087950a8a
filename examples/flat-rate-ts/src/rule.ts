// `flat-rate-ts`: the first-party `flat-rate` rule (plugins/flat-rate), line for line in
// TypeScript. One cashback rate for the whole order, with exclusions, a cap and a hold.
// The benchmark runs both to measure what the JavaScript engine costs per call, and a
// test checks that both decide the same on random orders.

import { get } from 'cashback:plugin/config@0.1.0';
import type { Order, RuleContext, RuleDecision, PluginError } from 'cashback:plugin/types@0.1.0';

interface Config {
  rate_bps: number;
  excluded_categories?: string[];
  excluded_skus?: string[];
  max_cashback?: number;
  reward_delay_days?: number;
  hold_above?: number;
}

function fail(error: PluginError): never {
  throw error;
}

function config(): Config {
  const c = JSON.parse(get()) as Partial<Config>;
  if (typeof c.rate_bps !== 'number') fail({ tag: 'config', val: 'rate_bps: required, an integer' });
  return c as Config;
}

/** `amount * bps / 10000`, rounded down, in bigint: money never touches a float. */
function ofBps(amount: bigint, bps: number): bigint {
  return (amount * BigInt(bps)) / 10000n;
}

/**
 * Splits `total` over `weights` in proportion so that the parts add up to it exactly
 * (largest remainder; ties to the earlier line): how a cap is spread back over the lines,
 * which the host requires to sum to the total. The same method as the Rust SDK's
 * `money::allocate`, so both rules decide alike to the cent.
 */
function allocate(total: bigint, weights: bigint[]): bigint[] {
  const w = weights.every((x) => x === 0n) ? weights.map(() => 1n) : weights;
  const sum = w.reduce((a, b) => a + b, 0n);
  const parts = w.map((x) => (total * x) / sum);
  const order = w.map((x, i) => ({ rest: (total * x) % sum, i }));
  order.sort((a, b) => (a.rest === b.rest ? a.i - b.i : a.rest > b.rest ? -1 : 1));
  let left = total - parts.reduce((a, b) => a + b, 0n);
  for (let k = 0; left > 0n; k = (k + 1) % order.length, left -= 1n) parts[order[k].i] += 1n;
  return parts;
}

export const rules = {
  evaluate(order: Order, _context: RuleContext): RuleDecision {
    const c = config();
    const currency = order.amount.currency;
    const decision: RuleDecision = { lines: [], exclusions: [], total: { minor: 0n, currency }, notes: [] };
    for (const line of order.lineItems) {
      if ((c.excluded_categories ?? []).some((x) => x.toLowerCase() === line.category.toLowerCase())) {
        decision.exclusions.push({ lineId: line.id, reason: `category ${line.category} earns no cashback` });
      } else if ((c.excluded_skus ?? []).includes(line.sku)) {
        decision.exclusions.push({ lineId: line.id, reason: `SKU ${line.sku} earns no cashback` });
      } else {
        const amount = ofBps(line.amount > 0n ? line.amount : 0n, c.rate_bps);
        decision.lines.push({ lineId: line.id, amount, rateBps: c.rate_bps, reason: `${c.rate_bps} bps of ${line.id}` });
      }
    }
    let total = decision.lines.reduce((sum, l) => sum + l.amount, 0n);
    if (c.max_cashback != null && total > BigInt(c.max_cashback)) {
      const cap = BigInt(c.max_cashback);
      const parts = allocate(cap, decision.lines.map((l) => l.amount));
      decision.lines.forEach((l, i) => (l.amount = parts[i]));
      total = cap;
      decision.notes.push(`capped at ${cap} minor units`);
    }
    decision.total = { minor: total, currency };
    decision.rewardDelayDays = c.reward_delay_days ?? undefined;
    if (c.hold_above != null && order.amount.minor > BigInt(c.hold_above)) {
      decision.hold = `order of ${order.amount.minor} is above ${c.hold_above}`;
    }
    return decision;
  },
};
