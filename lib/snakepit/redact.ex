defmodule Snakepit.Redact do
  @default_keys ~w(password passwd secret token api_key apikey authorization auth cookie private_key credential)

  @moduledoc """
  Masks the values of secret-named keys, so that errors can be logged and
  printed without leaking passwords or tokens.

  A key is secret-named when it is an atom or a string that contains one of
  the configured names, ignoring case and counting `-` as `_`: with the
  default list, `:db_password`, `"Authorization"` and `"X-Api-Key"` are. The
  value of such a key, whatever it is, becomes `"**redacted**"`.

  `Snakepit.Error` redacts its `details` when one of its functions builds an
  error (including the errors of workers, whose `details` hold what a Python
  `ToolError` carried), and again when it turns an error into a string, so
  a struct built by hand is covered too. Messages and tracebacks are not
  touched: they are text, with no keys to go by.

  ## Configuration

      config :snakepit, redact_keys: ~w(password token my_license)

  A list of non-empty strings or atoms; it replaces the default list:

      #{inspect(@default_keys)}

  Names are substrings, so short ones catch more than their word: `auth`
  also masks `author` and `authority`, and `token` masks `max_tokens`:
  configure a list without them if that hides something you need. The list
  is read each time an error is built or printed, so a change takes effect
  at once.
  """

  @mask "**redacted**"

  @doc """
  The default list of secret names.

      iex> "password" in Snakepit.Redact.default_keys()
      true
  """
  @spec default_keys() :: [String.t()]
  def default_keys, do: @default_keys

  @doc """
  The secret names in use: `config :snakepit, redact_keys: [...]`, or
  `default_keys/0`, lowercased, `-` as `_`. Entries that are not non-empty strings or
  atoms are skipped (a list that is not a list at all gives the default), so
  that printing an error never fails on a bad configuration; the
  configuration itself is checked when Snakepit starts (see `valid_keys?/1`).
  """
  @spec keys() :: [String.t()]
  def keys do
    case Application.get_env(:snakepit, :redact_keys, @default_keys) do
      list when is_list(list) -> names(list)
      _ -> @default_keys
    end
  end

  @doc """
  True if `term` can be the value of `config :snakepit, redact_keys:`: a
  list of non-empty strings or atoms.

      iex> Snakepit.Redact.valid_keys?(["password", :pin])
      true
      iex> Snakepit.Redact.valid_keys?(["password", ""])
      false
  """
  @spec valid_keys?(term()) :: boolean()
  def valid_keys?([]), do: true
  def valid_keys?([key | rest]), do: name(key) not in [nil, ""] and valid_keys?(rest)
  def valid_keys?(_other), do: false

  # The names of a list's valid entries (of any list, improper ones included).
  defp names([key | rest]) do
    case name(key) do
      name when name in [nil, ""] -> names(rest)
      name -> [name | names(rest)]
    end
  end

  defp names(_end), do: []

  @doc """
  True if `key` is named like a secret: an atom or a string that contains
  one of `keys/0`, ignoring case and counting `-` as `_`.

      iex> Snakepit.Redact.secret_key?(:db_password)
      true
      iex> Snakepit.Redact.secret_key?("Authorization")
      true
      iex> Snakepit.Redact.secret_key?("X-Api-Key")
      true
      iex> Snakepit.Redact.secret_key?(:timeout)
      false
      iex> Snakepit.Redact.secret_key?(42)
      false
  """
  @spec secret_key?(term()) :: boolean()
  def secret_key?(key), do: secret_key?(key, keys())

  @doc """
  `term` with the value of every secret-named key replaced by
  `"**redacted**"`, at any depth: in maps (structs included, except
  `MapSet`s, whose keys are their elements), in keyword lists and lists of
  `{key, value}` pairs, and in tuples. Everything else is left as is.

      iex> Snakepit.Redact.redact(%{user: "ann", password: "hunter2"})
      %{password: "**redacted**", user: "ann"}
      iex> Snakepit.Redact.redact(%{"db" => [host: "h", db_password: "x"], "Api_Key" => %{"a" => 1}})
      %{"Api_Key" => "**redacted**", "db" => [host: "h", db_password: "**redacted**"]}
      iex> Snakepit.Redact.redact({:ok, "token"})
      {:ok, "token"}
  """
  @spec redact(term()) :: term()
  def redact(term) do
    case keys() do
      [] -> term
      names -> walk(term, names)
    end
  end

  defp walk(%MapSet{} = set, _names), do: set

  defp walk(map, names) when is_map(map) do
    :maps.map(fn key, value -> pair_value(key, value, names) end, map)
  end

  defp walk(list, names) when is_list(list), do: walk_list(list, names)

  defp walk({key, value}, names), do: {key, pair_value(key, value, names)}

  defp walk(tuple, names) when is_tuple(tuple) do
    tuple |> Tuple.to_list() |> walk_list(names) |> List.to_tuple()
  end

  defp walk(other, _names), do: other

  # Lists may be improper.
  defp walk_list([head | tail], names), do: [walk(head, names) | walk_list(tail, names)]
  defp walk_list([], _names), do: []
  defp walk_list(tail, names), do: walk(tail, names)

  defp pair_value(key, value, names) do
    if secret_key?(key, names), do: @mask, else: walk(value, names)
  end

  defp secret_key?(key, names) do
    case name(key) do
      nil -> false
      name -> Enum.any?(names, &String.contains?(name, &1))
    end
  end

  # A key's name as it is matched: lowercased, `-` as `_`; nil for keys that
  # are not atoms or strings.
  defp name(key) when is_atom(key), do: key |> Atom.to_string() |> normalize()
  defp name(key) when is_binary(key), do: normalize(key)
  defp name(_key), do: nil

  # Bytes that are not UTF-8 are not lowercased.
  defp normalize(text) do
    text = if String.valid?(text), do: String.downcase(text), else: text
    String.replace(text, "-", "_")
  end
end
