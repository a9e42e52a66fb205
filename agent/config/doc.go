// Package config owns trackd's configuration: the YAML schema, its defaults,
// how a file is turned into a [Config], and the rules a Config must satisfy
// before the daemon starts.
//
// # Pipeline
//
// [Load] and [Parse] build a Config in a fixed order:
//
//  1. start from [Default], so every key is optional;
//  2. parse the YAML and lay it over the defaults, strictly: an unknown key, a
//     key set twice, or a value of the wrong type is an error;
//  3. expand ${NAME} references in the values (never in keys) from the
//     environment;
//  4. apply environment overrides (TRACKD_API_KEY);
//  5. normalise (lower-case enum values, drop a trailing slash from
//     upstream.url) and, in Load only, resolve relative paths against the
//     directory of the config file (see [Config.ResolvePaths]);
//  6. validate every key.
//
// # Promises
//
//   - A Config returned without an error has passed [Config.Validate]; callers
//     need not re-check ranges, enums, addresses or URLs.
//   - A failed Load or Parse reports every problem it found at once, as an
//     [*Error] holding one [Problem] per fault. Each problem names the key in
//     backticks, says what is allowed, and carries the line of that key in the
//     original file when the file set it.
//   - A [Secret] (listen.auth_token, upstream.api_key) prints as "***" through
//     fmt (every verb), log/slog, encoding/json, encoding.TextMarshaler and
//     YAML, so it cannot leak by accident; [Secret.Reveal] is the only way to
//     read it. [Config.Marshal] therefore never contains a secret.
//
// # Environment
//
// A value may refer to environment variables as ${NAME}. Expansion happens on
// the parsed values, after YAML has done its work, so a secret that contains
// "#", ": " or quotes cannot change the structure of the file. "$$" stands for
// a literal "$" (so "$${X}" gives the text "${X}"); a "$" followed by anything
// else is kept as it is. A reference to a variable that is not set is an
// error; a variable set to the empty string expands to the empty string.
//
// TRACKD_API_KEY, when set to a non-empty value, overrides upstream.api_key, so
// the key can be kept out of the file entirely.
//
// # Caveats
//
//   - Durations need a unit ("10s", "5m", "168h"); a bare number is an error
//     rather than a guess at nanoseconds or seconds.
//   - listen.unix_mode is always read as octal, from the text written in the
//     file: 660, 0660 and "0660" all mean rw-rw----.
//   - Sizes accept binary units (KiB, MiB, GiB, TiB, 1024-based) and decimal
//     units (KB, MB, GB, TB, 1000-based); "1GB" is 1,000,000,000 bytes.
//   - YAML merge keys (<<) are not supported; anchors and aliases are.
package config
