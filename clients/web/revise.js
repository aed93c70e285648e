// The browser's copies of streaming.transcript.revise and .relabel (the page cannot import Python); tests compare them.

// A speaker_revision (docs/protocol.md): the final's words with their settled speakers, re-split into one line per
// run of one speaker (a word without a speaker joins the run before it, at the start the one after it), cut halfway
// between runs; the lines replace the final's line in place.
export function revisedFinals(final, revision) {
  const words = revision.words || [];
  if (!final.words || !final.words.length || words.length !== final.words.length) {
    return [{ ...final, speaker: revision.speaker }];
  }
  const known = words.find((w) => w.speaker);
  let current = known ? known.speaker : null;
  const groups = [];
  for (const w of words) {
    const speaker = w.speaker || current;
    const word = { ...w, speaker };
    if (groups.length && groups[groups.length - 1][0].speaker === speaker) groups[groups.length - 1].push(word);
    else groups.push([word]);
    current = speaker;
  }
  if (groups.length === 1) return [{ ...final, words: groups[0], speaker: groups[0][0].speaker }];
  const cuts = [final.start];
  for (let i = 1; i < groups.length; i += 1) {
    const a = groups[i - 1][groups[i - 1].length - 1].end;
    const b = groups[i][0].start;
    cuts.push(Math.floor(((a + b) / 2) * 1000) / 1000);
  }
  cuts.push(final.end);
  return groups.map((group, i) => ({
    ...final, start: cuts[i], end: cuts[i + 1], words: group, speaker: group[0].speaker,
    text: group.map((w) => w.word).join(' '),
  }));
}

// A speaker_merge (docs/protocol.md): label `from` was the same person as `into`; a final (or partial) of the merge's
// channel takes `into` wherever it, or one of its words, said `from`.
export function mergedFinal(final, merge) {
  if ((final.channel || 0) !== (merge.channel || 0)) return final;
  const label = (speaker) => (speaker === merge.from ? merge.into : speaker);
  const out = { ...final, speaker: label(final.speaker) };
  if (final.words) out.words = final.words.map((w) => ({ ...w, speaker: label(w.speaker) }));
  return out;
}
