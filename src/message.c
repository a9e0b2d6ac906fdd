/*-------------------------------------------------------------------------
 *
 * message.c
 *	  What error messages may echo of a user's input: a bounded prefix.
 *
 * An error message that quotes an argument whole (a 1 MB literal, a large
 * jsonb document) becomes as large as the argument, in the client's error
 * and in the server log.  Every ereport that echoes user input passes it
 * through exp_message_clip() first.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "mb/pg_wchar.h"

#include "experiment.h"

/*
 * The first EXP_MESSAGE_ECHO_MAX bytes at most of s (len bytes in the
 * database encoding, or up to a NUL when len < 0), cut on a character
 * boundary with pg_mbcliplen, and "..." appended when anything was cut.
 * Returns a palloc'd, NUL-terminated string.
 */
char *
exp_message_clip(const char *s, int len)
{
	int			keep;
	char	   *out;

	if (len < 0)
		len = strlen(s);
	keep = len <= EXP_MESSAGE_ECHO_MAX ? len : pg_mbcliplen(s, len, EXP_MESSAGE_ECHO_MAX);
	/* pg_mbcliplen also stops at a NUL byte */
	out = palloc(keep + 4);
	memcpy(out, s, keep);
	if (keep < len)
		memcpy(out + keep, "...", 4);
	else
		out[keep] = '\0';
	return out;
}

/* exp_message_clip of a text value */
char *
exp_message_clip_text(const text *t)
{
	return exp_message_clip(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
}
