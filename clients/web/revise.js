// The browser's copy of streaming.transcript.revise (the page cannot import Python); tests compare the two.

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
