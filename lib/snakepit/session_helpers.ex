defmodule Snakepit.SessionHelpers do
  @moduledoc """
  The session functions under the names the design documents give them.
  Each is a thin wrapper of a `Snakepit` function, which is where the
  behaviour is documented (see "Sessions" in `Snakepit`).

  | here                       | `Snakepit`               |
  |----------------------------|--------------------------|
  | `execute_with_session/4`   | `execute_in_session/4`   |
  | `get_session_info/2`       | `session_info/2`         |
  | `cleanup_session/2`        | `end_session/2`          |

  Each takes the `:pool` option (default `:default`).
  """

  @doc """
  Calls `command` in the session `session_id`; see `Snakepit.execute_in_session/4`.
  """
  @spec execute_with_session(String.t(), String.t() | atom(), map() | keyword(), keyword()) ::
          {:ok, term()} | {:error, Snakepit.Error.t()}
  def execute_with_session(session_id, command, args, opts \\ []),
    do: Snakepit.execute_in_session(session_id, command, args, opts)

  @doc """
  Where the session is bound, its age and its calls; see `Snakepit.session_info/2`.
  """
  @spec get_session_info(String.t(), keyword()) :: {:ok, map()} | {:error, Snakepit.Error.t()}
  def get_session_info(session_id, opts \\ []), do: Snakepit.session_info(session_id, opts)

  @doc """
  Ends the session and frees its state in the workers; see `Snakepit.end_session/2`.
  """
  @spec cleanup_session(String.t(), keyword()) :: :ok | {:error, Snakepit.Error.t()}
  def cleanup_session(session_id, opts \\ []), do: Snakepit.end_session(session_id, opts)
end
